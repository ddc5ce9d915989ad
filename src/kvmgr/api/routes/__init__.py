"""One router per service.  Routes only translate: validate, check who asks, call, shape."""
