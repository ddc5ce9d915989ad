"""Declarative mapping between Python objects and libvirt XML, over lxml.

A class describes one XML element.  Each mapped field names its XPath once::

    class Disk(XMLObject):
        TAG = "disk"
        device = XMLProperty("./@device")
        source_file = XMLProperty("./source/@file")
        boot_order = XMLProperty("./boot/@order", int)

The object wraps an lxml element, so the same class builds new XML and edits parsed XML in place:
setting a field creates the missing elements on its path, clearing it (``None``) removes what the
field owns, and every element or attribute the class does not know about is left untouched.
Escaping is lxml's job; no XML is ever built by string formatting.

Supported paths are the subset of XPath libvirt definitions need: ``./a/b`` (element text),
``./a/@b`` (attribute), ``./@b`` (attribute of this element), optionally ``{namespace}tag``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

from lxml import etree

from kvmgr.errors import InvalidInput

T = TypeVar("T")
X = TypeVar("X", bound="XMLObject")

Element = etree._Element

_PARSER = etree.XMLParser(
    remove_blank_text=True, resolve_entities=False, no_network=True, huge_tree=False
)


def parse_xml(text: str | bytes, *, what: str = "XML") -> Element:
    """Parse untrusted XML safely (no entities, no network) with a clear error."""
    if isinstance(text, str):
        text = text.encode()
    try:
        return etree.fromstring(text, _PARSER)
    except etree.XMLSyntaxError as err:
        raise InvalidInput(f"{what} is not well-formed: {err}") from err


# ----------------------------------------------------------------------------------- converters
class Converter(Generic[T]):
    """Turns the text of an element or attribute into a Python value and back."""

    def __init__(self, load: Callable[[str], T], dump: Callable[[T], str]) -> None:
        self.load = load
        self.dump = dump


def _load_yes_no(text: str) -> bool:
    return text.strip().lower() in ("yes", "on", "true", "1")


STR: Converter[str] = Converter(lambda text: text, str)
INT: Converter[int] = Converter(lambda text: int(text.strip()), str)
YES_NO: Converter[bool] = Converter(_load_yes_no, lambda value: "yes" if value else "no")
ON_OFF: Converter[bool] = Converter(_load_yes_no, lambda value: "on" if value else "off")

_CONVERTERS: dict[type, Converter[Any]] = {str: STR, int: INT, bool: YES_NO}


# ----------------------------------------------------------------------------------- paths
_STEP_RE = re.compile(r"\{[^}]*\}[^/]+|[^/]+")


def _split_path(xpath: str) -> tuple[list[str], str | None]:
    """``./a/b/@c`` -> (['a', 'b'], 'c'); ``./a`` -> (['a'], None); ``./@c`` -> ([], 'c')."""
    if not xpath.startswith("."):
        raise ValueError(f"mapped paths are relative to the element: {xpath!r}")
    # A step is ``tag``, ``{namespace}tag`` or ``@attr``; a namespace URI may itself contain '/'.
    steps = _STEP_RE.findall(xpath[1:])
    attribute = None
    if steps and steps[-1].startswith("@"):
        attribute = steps.pop()[1:]
    return steps, attribute


def _find(element: Element, steps: list[str]) -> Element | None:
    node: Element | None = element
    for step in steps:
        if node is None:
            return None
        node = node.find(step)
    return node


def _ensure(element: Element, steps: list[str]) -> Element:
    node = element
    for step in steps:
        child = node.find(step)
        if child is None:
            child = etree.SubElement(node, step)
        node = child
    return node


def _prune_empty(element: Element, steps: list[str]) -> None:
    """Remove elements on ``steps`` (deepest first) that were left with no content at all."""
    for depth in range(len(steps), 0, -1):
        node = _find(element, steps[:depth])
        if node is None:
            continue
        if len(node) or node.attrib or (node.text and node.text.strip()):
            return
        parent = node.getparent()
        if parent is not None:
            parent.remove(node)


# ----------------------------------------------------------------------------------- descriptors
class XMLProperty(Generic[T]):
    """One value at an XPath: element text or attribute, typed by a converter."""

    @overload
    def __init__(self: XMLProperty[str], xpath: str, *, doc: str = "") -> None: ...
    @overload
    def __init__(self, xpath: str, kind: type[T] | Converter[T], *, doc: str = "") -> None: ...
    def __init__(self, xpath: str, kind: Any = str, *, doc: str = "") -> None:
        """A str field unless ``kind`` says int or bool, or gives a converter."""
        self.xpath = xpath
        self.steps, self.attribute = _split_path(xpath)
        self.converter: Converter[T] = kind if isinstance(kind, Converter) else _CONVERTERS[kind]
        self.__doc__ = doc or xpath
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> XMLProperty[T]: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type) -> T | None: ...
    def __get__(self, obj: XMLObject | None, owner: type) -> XMLProperty[T] | T | None:
        if obj is None:
            return self
        node = _find(obj.element, self.steps)
        if node is None:
            return None
        raw = node.get(self.attribute) if self.attribute else node.text
        if raw is None:
            return None
        try:
            return self.converter.load(raw)
        except ValueError as err:
            raise InvalidInput(f"{obj.TAG} {self.xpath} has an invalid value {raw!r}") from err

    def __set__(self, obj: XMLObject, value: T | None) -> None:
        if value is None:
            self._clear(obj)
            return
        text = self.converter.dump(value)
        node = _ensure(obj.element, self.steps)
        if self.attribute:
            node.set(self.attribute, text)
        else:
            node.text = text

    def _clear(self, obj: XMLObject) -> None:
        node = _find(obj.element, self.steps)
        if node is None:
            return
        if self.attribute:
            if self.attribute in node.attrib:
                del node.attrib[self.attribute]
        else:
            node.text = None
        _prune_empty(obj.element, self.steps)


class XMLFlag:
    """Presence of an empty element, e.g. ``<readonly/>`` or ``<features><acpi/></features>``."""

    def __init__(self, xpath: str, *, doc: str = "") -> None:
        self.xpath = xpath
        self.steps, attribute = _split_path(xpath)
        if attribute or not self.steps:
            raise ValueError(f"a flag maps an element, not an attribute: {xpath!r}")
        self.__doc__ = doc or xpath
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> XMLFlag: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type) -> bool: ...
    def __get__(self, obj: XMLObject | None, owner: type) -> XMLFlag | bool:
        if obj is None:
            return self
        return _find(obj.element, self.steps) is not None

    def __set__(self, obj: XMLObject, value: bool) -> None:
        node = _find(obj.element, self.steps)
        if value and node is None:
            _ensure(obj.element, self.steps)
        elif not value and node is not None:
            parent = node.getparent()
            if parent is not None:
                parent.remove(node)
            _prune_empty(obj.element, self.steps[:-1])


class XMLChild(Generic[X]):
    """A single child element mapped to its own class (``<os>``, ``<cpu>``)."""

    def __init__(self, cls: type[X], xpath: str) -> None:
        self.cls = cls
        self.xpath = xpath
        self.steps, _ = _split_path(xpath)
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> XMLChild[X]: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type) -> X: ...
    def __get__(self, obj: XMLObject | None, owner: type) -> XMLChild[X] | X:
        """The child, created on first access so ``domain.os.arch = 'x86_64'`` just works."""
        if obj is None:
            return self
        return self.cls(_ensure(obj.element, self.steps))

    def exists(self, obj: XMLObject) -> bool:
        return _find(obj.element, self.steps) is not None


class XMLChildList(Generic[X]):
    """Repeated child elements mapped to a class (``<devices><disk>`` ...)."""

    def __init__(self, cls: type[X], xpath: str) -> None:
        self.cls = cls
        self.xpath = xpath
        self.steps, _ = _split_path(xpath)
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> XMLChildList[X]: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type) -> ChildList[X]: ...
    def __get__(self, obj: XMLObject | None, owner: type) -> XMLChildList[X] | ChildList[X]:
        if obj is None:
            return self
        return ChildList(obj.element, self.steps, self.cls)


class ChildList(Sequence[X]):
    """Live view of repeated children: indexing wraps, ``append``/``remove`` edit the tree."""

    def __init__(self, root: Element, steps: list[str], cls: type[X]) -> None:
        self._root = root
        self._parent_steps = steps[:-1]
        self._tag = steps[-1]
        self._cls = cls

    def _nodes(self) -> list[Element]:
        parent = _find(self._root, self._parent_steps)
        return [] if parent is None else parent.findall(self._tag)

    @overload
    def __getitem__(self, index: int) -> X: ...
    @overload
    def __getitem__(self, index: slice) -> list[X]: ...
    def __getitem__(self, index: int | slice) -> X | list[X]:
        nodes = self._nodes()
        if isinstance(index, slice):
            return [self._cls(node) for node in nodes[index]]
        return self._cls(nodes[index])

    def __len__(self) -> int:
        return len(self._nodes())

    def __iter__(self) -> Iterator[X]:
        return (self._cls(node) for node in self._nodes())

    def append(self, item: X) -> X:
        """Add ``item`` after the last sibling of its kind (libvirt keeps devices grouped)."""
        parent = _ensure(self._root, self._parent_steps)
        siblings = parent.findall(self._tag)
        if siblings:
            siblings[-1].addnext(item.element)
        else:
            parent.append(item.element)
        return item

    def remove(self, item: X) -> None:
        parent = item.element.getparent()
        if parent is not None:
            parent.remove(item.element)


# ----------------------------------------------------------------------------------- base class
class XMLObject:
    """Base of every mapped element.  ``TAG`` is the element's name."""

    TAG: ClassVar[str] = ""

    def __init__(self, element: Element | None = None) -> None:
        self.element: Element = element if element is not None else etree.Element(self.TAG)

    @classmethod
    def from_xml(cls, text: str | bytes) -> Self:
        root = parse_xml(text, what=f"<{cls.TAG}> XML")
        if root.tag != cls.TAG:
            raise InvalidInput(f"expected a <{cls.TAG}> document, got <{root.tag}>")
        return cls(root)

    def to_xml(self) -> str:
        return etree.tostring(self.element, pretty_print=True, encoding="unicode")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XMLObject) and other.element is self.element

    def __hash__(self) -> int:
        return id(self.element)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.TAG}>"

    @classmethod
    def mapped_fields(
        cls,
    ) -> dict[str, XMLProperty[Any] | XMLFlag | XMLChild[Any] | XMLChildList[Any]]:
        """Every mapped field of the class, by attribute name (used by the coverage test)."""
        fields: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, XMLProperty | XMLFlag | XMLChild | XMLChildList):
                    fields[name] = value
        return fields
