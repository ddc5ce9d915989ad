# Login shell setup of the demo guest's serial console.
export PATH=/bin:/sbin
export PS1='kvmgr-demo# '
# The serial line has no size; without one the shell's line editor wraps long commands oddly.
stty cols 500 rows 50 2>/dev/null
