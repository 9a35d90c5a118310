"""Structural validation of OVF envelopes: our own rules, written from DMTF DSP0243.

``verify --strict`` always runs this; the DMTF XSDs (:mod:`.schema`) are an extra layer when
they are installed.  Two kinds of rule:

* **What the DSP8023 envelope schemas (1.0.0, 1.1.1, 2.0.1) and the CIM class schemas they
  import say**, re-stated here as tables: which elements may appear where and in which order
  (sections are a substitution group; RASD/VSSD children are alphabetical sequences), which
  are required, which attributes exist on each element and which are required, value types
  (integers and their ranges, booleans, URIs, language tags, dates), enumerations (e.g.
  ``ChangeableType``), ``xsi:nil`` and extension points (``##other`` wildcards, processed laxly:
  an element from a schema we know is checked, others are skipped).  An envelope-1 document is
  judged against both 1.0.0 and 1.1.1, as the XSD layer does; a finding that holds for only one
  of them names it.  Rule ids ``ovf.struct.element|missing|attribute|value`` (:data:`XSD_RULES`).
* **What DSP0243 says in prose, which no XSD can express**: allocation units are DSP0004
  programmatic units (``byte * 2^20``; ``ovf:capacityAllocationUnits`` and memory Items in
  bytes), references resolve (``ovf:parentRef``, Icon/Strings/EnvironmentFiles ``fileRef``,
  ``ovf:configuration`` names, StartupSection and PlacementSection ids), property types and
  startup actions are from the spec's lists, content and configuration ids are unique.
  Rule ids ``ovf.struct.units|ref|enum|unique``.  The lax reader already checks the other
  references (File/Disk/HostResource/Parent/Network) and capacities, always.

Element and attribute names are matched by namespace URI, never by prefix: the default-namespace
form (``<Envelope xmlns="…/envelope/1">``) and the ``ovf:``-prefixed form are the same document.

Not checked (XSD layer only): the inside of OVF 2 ``EncryptionSection`` key elements (XML
Encryption's own schema) and ``xml:id`` uniqueness.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from lxml import etree

from ..errors import Finding, location
from . import schema
from .namespaces import (
    NS_BOOTC,
    NS_BOOTS,
    NS_CIM,
    NS_EPASD,
    NS_OVF1,
    NS_OVF2,
    NS_RASD,
    NS_SASD,
    NS_VMW,
    NS_VSSD,
    NS_XENC,
    NS_XENC11,
    NS_XML,
    NS_XSI,
    RT_MEMORY as _RT_MEMORY,
)

__all__ = ["RULES", "XSD_RULES", "Issue", "Report", "check", "check_findings",
           "strict_validators", "VERSIONS_FOR_NAMESPACE", "parse_programmatic_unit"]


VERSIONS_FOR_NAMESPACE: dict[str, tuple[str, ...]] = {NS_OVF1: ("1.0.0", "1.1.1"),
                                                      NS_OVF2: ("2.0.1",)}

RULES: dict[str, str] = {
    "ovf.struct.element": "strict: an element stands where the OVF schema does not allow it "
                          "(unknown, out of order, repeated, or a section outside the "
                          "substitution group)",
    "ovf.struct.missing": "strict: a required element or attribute is missing",
    "ovf.struct.attribute": "strict: an attribute the element does not declare and has no "
                            "extension point for",
    "ovf.struct.value": "strict: a value is not of its schema type (integer range, boolean, "
                        "URI, enumeration, length, xsi:nil) or text stands in element-only content",
    "ovf.struct.units": "strict: an allocation unit is not a DSP0004 programmatic unit (disk "
                        "capacity and memory units must be bytes, e.g. 'byte * 2^20')",
    "ovf.struct.ref": "strict: a reference names nothing (Disk parentRef, Icon/Strings/"
                      "EnvironmentFiles fileRef, ovf:configuration, StartupSection or "
                      "PlacementSection id)",
    "ovf.struct.enum": "strict: a value outside a list DSP0243 gives (Property ovf:type, "
                       "StartupSection startAction/stopAction)",
    "ovf.struct.unique": "strict: two VirtualSystems/Collections, or two deployment "
                         "Configurations, share an ovf:id; or more than one default Configuration",
}
# The rules the DMTF XSDs also enforce: on these the verdicts of both layers agree.
XSD_RULES = frozenset({"ovf.struct.element", "ovf.struct.missing", "ovf.struct.attribute",
                       "ovf.struct.value"})

_MAX_ISSUES = 200  # a broken file could produce thousands; the first ones say enough
# libxml2 refuses documents nested deeper than 256 levels (without huge_tree); this bound keeps
# the recursive walk far from Python's recursion limit whatever parsed the tree.
_MAX_DEPTH = 300
_MAX_UNIT_CHARS = 200  # the longest real allocation unit is ~20 characters
_MAX_FACTOR = 1 << 256


# ---------------------------------------------------------------------------------------------
# Simple types (XML Schema part 2 lexical rules, as a validating parser applies them)

@dataclass(frozen=True)
class Simple:
    base: str                            # string, boolean, anyURI, language, integer kinds...
    enum: frozenset[int] | None = None   # allowed integer values
    max_length: int | None = None
    max_value: int | None = None
    words: frozenset[str] | None = None  # allowed string values


_INT_RANGES = {
    "unsignedLong": (0, 2**64 - 1), "long": (-2**63, 2**63 - 1),
    "unsignedInt": (0, 2**32 - 1), "int": (-2**31, 2**31 - 1),
    "unsignedShort": (0, 2**16 - 1), "short": (-2**15, 2**15 - 1),
    "unsignedByte": (0, 255), "byte": (-128, 127),
}
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_LANGUAGE = re.compile(r"[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*\Z")
_NCNAME = re.compile(r"[^\W\d][\w.\-]*\Z")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DATE = r"-?[0-9]{4,}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?|24:00:00(\.0+)?"
_ZONE = r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?"
_DATETIME_RES = {
    "date": re.compile("(%s)%s\\Z" % (_DATE, _ZONE)),
    "time": re.compile("(%s)%s\\Z" % (_TIME, _ZONE)),
    "dateTime": re.compile("(%s)T(%s)%s\\Z" % (_DATE, _TIME, _ZONE)),
    "duration": re.compile(r"-?P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?"
                           r"(\d+(\.\d+)?S)?)?\Z"),
}


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _uri_problem(text: str) -> str | None:
    # The checks a validating parser's URI parser trips over on real input: broken %-escapes,
    # a second '#', '[' outside an IPv6 host, and a ':' before the first '/' that does not end
    # a valid scheme (a relative path's first segment cannot hold ':').
    value = _collapse(text)
    if _BAD_ESCAPE.search(value):
        return "a '%' not followed by two hex digits"
    if value.count("#") > 1:
        return "more than one '#'"
    head = re.split(r"[/?#]", value, maxsplit=1)[0]
    if ":" in head and not _URI_SCHEME.match(head.partition(":")[0]):
        return "a ':' in the first path segment"
    rest = value.split("#", 1)[0]
    if "[" in rest or "]" in rest:
        if not re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#@]*@)?\[[0-9A-Fa-f:.]+\]"
                        r"(?::[0-9]*)?(?:[/?#][^\[\]]*)?\Z", rest):
            return "'[' or ']' outside an IPv6 host"
    return None


def _simple_problem(simple: Simple, text: str) -> str | None:
    """Why ``text`` is not a valid value of ``simple`` (None when it is)."""
    base = simple.base
    if base in ("string", "anySimpleType"):
        if simple.max_length is not None and len(text) > simple.max_length:
            return "%d characters, at most %d allowed" % (len(text), simple.max_length)
        if simple.words is not None and text not in simple.words:
            return "not one of %s" % ", ".join(sorted(simple.words))
        return None
    value = _collapse(text)
    if base in _INT_RANGES:
        if not _INTEGER.match(value):
            return "not an integer"
        number = int(value)
        lo, hi = _INT_RANGES[base]
        if simple.max_value is not None:
            hi = min(hi, simple.max_value)
        if not lo <= number <= hi:
            return "out of range %d..%d" % (lo, hi)
        if simple.enum is not None and number not in simple.enum:
            return "not one of %s" % ", ".join(str(v) for v in sorted(simple.enum))
        return None
    if base == "boolean":
        return None if value in ("true", "false", "1", "0") else "not true, false, 1 or 0"
    if base == "anyURI":
        return _uri_problem(text)
    if base == "language":
        # xml:lang also allows the empty string (xml.xsd).
        return None if value == "" or _LANGUAGE.match(value) else "not a language tag"
    if base == "NCName":
        if simple.words is not None and value not in simple.words:
            return "not one of %s" % ", ".join(sorted(simple.words))
        return None if _NCNAME.match(value) else "not an XML name"
    if base in _DATETIME_RES:
        return None if _DATETIME_RES[base].match(value) else "not an xs:%s" % base
    raise AssertionError(base)


STRING = Simple("string")
BOOLEAN = Simple("boolean")
URI = Simple("anyURI")
ULONG, LONG, UINT = Simple("unsignedLong"), Simple("long"), Simple("unsignedInt")
USHORT, UBYTE = Simple("unsignedShort"), Simple("unsignedByte")


# ---------------------------------------------------------------------------------------------
# Complex types and content models


@dataclass(frozen=True)
class Attr:
    type: Simple
    required: bool = False


@dataclass
class Complex:
    """An element's type: element-only content (``content``), simple content (``simple``),
    empty content (neither), or anything (``any_content``, xs:anyType)."""

    name: str
    content: tuple["Particle", ...] | None = None
    simple: Simple | None = None
    attrs: dict[tuple[str, str], Attr] = field(default_factory=dict)
    any_attr: bool = False
    abstract: bool = False
    any_content: bool = False


@dataclass(frozen=True)
class Decl:
    ns: str
    name: str
    type: Complex
    nillable: bool = False


@dataclass(frozen=True)
class Particle:
    """One term of a sequence: an element, a choice of elements, a substitution group head
    (``group``: "Section" or "Content"), or a ``##other`` wildcard (``other_than``)."""

    min: int = 1
    max: int | None = 1
    decl: Decl | None = None
    choice: tuple[Decl, ...] = ()
    group: str | None = None
    other_than: str | None = None

    def names(self, schema: "Schema") -> list[str]:
        if self.decl is not None:
            return [_qname(self.decl.ns, self.decl.name)]
        if self.choice:
            return [_qname(d.ns, d.name) for d in self.choice]
        if self.group == "Section":
            return ["a section"]
        if self.group == "Content":
            return ["a VirtualSystem or VirtualSystemCollection"]
        return ["an element of another namespace"]


_PREFIXES = {NS_OVF1: "ovf", NS_OVF2: "ovf", NS_RASD: "rasd", NS_VSSD: "vssd", NS_CIM: "cim",
             NS_EPASD: "epasd", NS_SASD: "sasd", NS_BOOTC: "bootc", NS_BOOTS: "boots",
             NS_XML: "xml", NS_XSI: "xsi", NS_XENC: "xenc", NS_XENC11: "xenc11",
             NS_VMW: "vmw"}


def _qname(ns: str, name: str) -> str:
    prefix = _PREFIXES.get(ns)
    if prefix is not None:
        return "%s:%s" % (prefix, name)
    return "{%s}%s" % (ns, name) if ns else name


@dataclass
class Schema:
    version: str
    ns: str
    elements: dict[tuple[str, str], Decl]       # global element declarations
    attributes: dict[tuple[str, str], Simple]   # global attribute declarations
    sections: frozenset[str]                    # members of the ovf:Section substitution group
    types: dict[str, Complex]                   # named ovf types, for xsi:type


def _one(decl: Decl, lo: int = 1, hi: int | None = 1) -> Particle:
    return Particle(min=lo, max=hi, decl=decl)


def _opt(decl: Decl) -> Particle:
    return Particle(min=0, max=1, decl=decl)


def _many(decl: Decl, lo: int = 0) -> Particle:
    return Particle(min=lo, max=None, decl=decl)


def _other(ns: str) -> Particle:
    return Particle(min=0, max=None, other_than=ns)


# CIM class properties: "Name" is an optional nillable cimString, "Name*" repeats,
# "Name!" is required and not nillable, ":kind" names another type (see _cim_type).
_RASD_10 = ("Address AddressOnParent AllocationUnits AutomaticAllocation:bool "
            "AutomaticDeallocation:bool Caption:caption ChangeableType:changeable "
            "ConfigurationName Connection* ConsumerVisibility:ushort Description ElementName! "
            "Generation:ulong HostResource* InstanceID! Limit:ulong MappingBehavior:ushort "
            "OtherResourceType Parent PoolID Reservation:ulong ResourceSubType "
            "ResourceType:ushort VirtualQuantity:ulong Weight:uint")
_RASD_11 = ("Address AddressOnParent AllocationUnits AutomaticAllocation:bool "
            "AutomaticDeallocation:bool Caption:caption Connection* ConsumerVisibility:ushort "
            "Description ElementName! HostResource* InstanceID! Limit:ulong "
            "MappingBehavior:ushort OtherResourceType Parent PoolID Reservation:ulong "
            "ResourceSubType ResourceType:ushort VirtualQuantity:ulong VirtualQuantityUnits "
            "Weight:uint")
_RASD_20 = ("Address AddressOnParent AllocationUnits AutomaticAllocation:bool "
            "AutomaticDeallocation:bool Caption:caption ChangeableType:changeable "
            "ComponentSetting*:anytype ConfigurationName Connection* ConsumerVisibility:ushort "
            "Description ElementName! Generation:ulong HostResource* InstanceID! Limit:ulong "
            "MappingBehavior:ushort OtherResourceType Parent PoolID Reservation:ulong "
            "ResourceSubType ResourceType:ushort SoID SoOrgID VirtualQuantity:ulong "
            "VirtualQuantityUnits Weight:uint")
_VSSD_10 = ("AutomaticRecoveryAction:action AutomaticShutdownAction:action "
            "AutomaticStartupAction:action AutomaticStartupActionDelay:datetime "
            "AutomaticStartupActionSequenceNumber:ushort Caption:caption "
            "ChangeableType:changeable ConfigurationDataRoot ConfigurationFile ConfigurationID "
            "ConfigurationName CreationTime:datetime Description ElementName! Generation:ulong "
            "InstanceID! LogDataRoot Notes* RecoveryFile SnapshotDataRoot SuspendDataRoot "
            "SwapFileDataRoot VirtualSystemIdentifier VirtualSystemType")
_VSSD_11 = ("AutomaticRecoveryAction:action AutomaticShutdownAction:action "
            "AutomaticStartupAction:action AutomaticStartupActionDelay:datetime "
            "AutomaticStartupActionSequenceNumber:ushort Caption:caption ConfigurationDataRoot "
            "ConfigurationFile ConfigurationID CreationTime:datetime Description ElementName! "
            "InstanceID! LogDataRoot Notes* RecoveryFile SnapshotDataRoot SuspendDataRoot "
            "SwapFileDataRoot VirtualSystemIdentifier VirtualSystemType")
# 2.0.1's CIM classes widen the three actions to any unsignedShort.
_VSSD_20 = ("AutomaticRecoveryAction:ushort AutomaticShutdownAction:ushort "
            "AutomaticStartupAction:ushort AutomaticStartupActionDelay:datetime "
            "AutomaticStartupActionSequenceNumber:ushort Caption:caption "
            "ChangeableType:changeable ComponentSetting*:anytype ConfigurationDataRoot "
            "ConfigurationFile ConfigurationID ConfigurationName CreationTime:datetime "
            "Description ElementName! Generation:ulong InstanceID! LogDataRoot Notes* "
            "RecoveryFile SnapshotDataRoot SoID SoOrgID SuspendDataRoot SwapFileDataRoot "
            "VirtualSystemIdentifier VirtualSystemType")
_EPASD_20 = ("Address AddressOnParent AllocationUnits AllowedPriorities*:ushort "
             "AllowedToReceiveMACAddresses* AllowedToReceiveVLANs*:ushort "
             "AllowedToTransmitMACAddresses* AllowedToTransmitVLANs*:ushort "
             "AutomaticAllocation:bool AutomaticDeallocation:bool Caption:caption "
             "ChangeableType:changeable ComponentSetting*:anytype ConfigurationName Connection* "
             "ConsumerVisibility:ushort DefaultPortVID:ushort DefaultPriority:ushort Description "
             "DesiredVLANEndpointMode:ushort ElementName! Generation:ulong GroupID:uint "
             "HostResource* InstanceID! Limit:ulong ManagerID:uint MappingBehavior:ushort "
             "NetworkPortProfileID NetworkPortProfileIDType:ushort OtherEndpointMode "
             "OtherNetworkPortProfileIDTypeInfo OtherResourceType Parent PoolID "
             "PortCorrelationID PortVID:ushort Promiscuous:bool ReceiveBandwidthLimit:ulong "
             "ReceiveBandwidthReservation:ulong Reservation:ulong ResourceSubType "
             "ResourceType:ushort SoID SoOrgID SourceMACFilteringEnabled:bool VSITypeID:vsi "
             "VSITypeIDVersion:ubyte VirtualQuantity:ulong VirtualQuantityUnits Weight:uint")
_SASD_20 = ("Access:ushort Address AddressOnParent AllocationUnits AutomaticAllocation:bool "
            "AutomaticDeallocation:bool Caption:caption ChangeableType:changeable "
            "ComponentSetting*:anytype ConfigurationName Connection* ConsumerVisibility:ushort "
            "Description ElementName! Generation:ulong HostExtentName "
            "HostExtentNameFormat:ushort HostExtentNameNamespace:ushort "
            "HostExtentStartingAddress:ulong HostResource* HostResourceBlockSize:ulong "
            "InstanceID! Limit:ulong MappingBehavior:ushort OtherHostExtentNameFormat "
            "OtherHostExtentNameNamespace OtherResourceType Parent PoolID Reservation:ulong "
            "ResourceSubType ResourceType:ushort SoID SoOrgID VirtualQuantity:ulong "
            "VirtualQuantityUnits VirtualResourceBlockSize:ulong Weight:uint")
_BOOTC_20 = ("Caption:caption ChangeableType:ushort ComponentSetting*:anytype ConfigurationName "
             "Description ElementName! Generation:ulong InstanceID! SoID SoOrgID")
_BOOTS_20 = ("BIOSBootString BootString Caption:caption ChangeableType:ushort "
             "ComponentSetting*:anytype ConfigurationName Description ElementName! "
             "FailThroughSupported:ushort Generation:ulong InstanceID! SoID SoOrgID "
             "StructuredBootString")


def _cim_simple(simple: Simple) -> Complex:
    # cim:cimString and friends: simple content plus any attribute.
    return Complex("cim", simple=simple, any_attr=True)


def _datetime_type() -> Complex:
    choice = tuple(Decl(NS_CIM, name, Complex("xs", simple=Simple(base)), nillable=nil)
                   for name, base, nil in (("CIM_DateTime", "string", True),
                                           ("Interval", "duration", False),
                                           ("Date", "date", False), ("Time", "time", False),
                                           ("Datetime", "dateTime", False)))
    return Complex("cim:cimDateTime", content=(Particle(choice=choice),), any_attr=True)


_ANYTYPE = Complex("xs:anyType", any_content=True, any_attr=True)


def _cim_type(kind: str) -> Complex:
    return {
        "str": _cim_simple(STRING),
        "bool": _cim_simple(BOOLEAN),
        "ushort": _cim_simple(USHORT),
        "uint": _cim_simple(UINT),
        "ulong": _cim_simple(ULONG),
        "ubyte": _cim_simple(UBYTE),
        "caption": _cim_simple(Simple("string", max_length=64)),
        "changeable": _cim_simple(Simple("unsignedShort", enum=frozenset(range(4)))),
        "action": _cim_simple(Simple("unsignedShort", enum=frozenset(range(5)))),
        "vsi": _cim_simple(Simple("unsignedInt", max_value=16777215)),
        "datetime": _datetime_type(),
        "anytype": _ANYTYPE,
    }[kind]


def _cim_class(ns: str, class_name: str, spec: str,
               elements: dict[tuple[str, str], Decl]) -> Complex:
    """The class's type (an alphabetical sequence plus ##other), registering each property
    as a global element of the class namespace."""
    particles = []
    for token in spec.split():
        name, _, kind = token.partition(":")
        required = name.endswith("!")
        many = name.endswith("*")
        name = name.rstrip("!*")
        decl = Decl(ns, name, _cim_type(kind or "str"), nillable=not required)
        elements[(ns, name)] = decl
        particles.append(Particle(min=1 if required else 0, max=None if many else 1,
                                  decl=decl))
    particles.append(_other(ns))
    ctype = Complex(class_name + "_Type", content=tuple(particles), any_attr=True)
    elements[(ns, class_name)] = Decl(ns, class_name, ctype)
    return ctype


@lru_cache(maxsize=None)
def schema_model(version: str) -> Schema:
    """The rules of one DSP8023 version ("1.0.0", "1.1.1", "2.0.1") as tables."""
    v10, v20 = version == "1.0.0", version == "2.0.1"
    if version not in ("1.0.0", "1.1.1", "2.0.1"):
        raise ValueError(version)
    ovf = NS_OVF2 if v20 else NS_OVF1
    elements: dict[tuple[str, str], Decl] = {}
    types: dict[str, Complex] = {}

    def attrs(*items: tuple[str, Simple, bool]) -> dict[tuple[str, str], Attr]:
        return {(ovf, name): Attr(t, req) for name, t, req in items}

    def local(name: str, ctype: Complex) -> Decl:
        return Decl(ovf, name, ctype)

    msg = Complex("Msg_Type", simple=STRING, attrs=attrs(("msgid", STRING, False)),
                  any_attr=True)
    cim_string = _cim_simple(STRING)
    other = _other(ovf)
    info = _one(local("Info", msg))

    rasd_class = _cim_class(NS_RASD, "CIM_ResourceAllocationSettingData",
                            _RASD_10 if v10 else _RASD_20 if v20 else _RASD_11, elements)
    vssd_class = _cim_class(NS_VSSD, "CIM_VirtualSystemSettingData",
                            _VSSD_10 if v10 else _VSSD_20 if v20 else _VSSD_11, elements)
    item_attrs = attrs(("required", BOOLEAN, False), ("configuration", STRING, False),
                       ("bound", STRING, False))

    def settings(name: str, cls: Complex) -> Complex:
        return Complex(name, content=cls.content, attrs=dict(item_attrs), any_attr=True)

    rasd = settings("RASD_Type", rasd_class)
    vssd = Complex("VSSD_Type", content=vssd_class.content, any_attr=True)
    epasd = sasd = None
    if v20:
        epasd = settings("EPASD_Type", _cim_class(
            NS_EPASD, "CIM_EthernetPortAllocationSettingData", _EPASD_20, elements))
        sasd = settings("SASD_Type", _cim_class(
            NS_SASD, "CIM_StorageAllocationSettingData", _SASD_20, elements))
        _cim_class(NS_BOOTC, "CIM_BootConfigSetting", _BOOTC_20, elements)
        _cim_class(NS_BOOTS, "CIM_BootSourceSetting", _BOOTS_20, elements)
    elements[(NS_CIM, "DefaultValue")] = Decl(NS_CIM, "DefaultValue",
                                              Complex("xs", simple=Simple("anySimpleType")))

    section_attrs = attrs(("required", BOOLEAN, False))

    def section(name: str, *particles: Particle, extra: Iterable[tuple[str, Simple, bool]] = ()
                ) -> None:
        ctype = Complex(name + "_Type", content=(info, *particles),
                        attrs={**section_attrs, **attrs(*extra)}, any_attr=True)
        types[ctype.name] = ctype
        elements[(ovf, name)] = Decl(ovf, name, ctype)

    section("AnnotationSection", _one(local("Annotation", msg)), other)

    prop_attrs = [("key", STRING, True), ("type", STRING, True), ("qualifiers", STRING, False),
                  ("userConfigurable", BOOLEAN, False), ("value", STRING, False),
                  ("password", BOOLEAN, False)]
    value_attrs = [("value", STRING, True), ("configuration", STRING, False)]
    if v20:
        prop_attrs.append(("configuration", STRING, False))
    pcv = Complex("PropertyConfigurationValue_Type", content=(other,),
                  attrs=attrs(*value_attrs), any_attr=True)
    prop = Complex("Property", content=(_opt(local("Label", msg)),
                                        _opt(local("Description", msg)),
                                        _many(local("Value", pcv))),
                   attrs=attrs(*prop_attrs), any_attr=True)
    icon = Complex("Icon", content=(), attrs=attrs(
        ("height", USHORT, False), ("width", USHORT, False), ("mimeType", STRING, False),
        ("fileRef", STRING, True)), any_attr=True)
    section("ProductSection",
            *(_opt(local(n, msg)) for n in ("Product", "Vendor")),
            *(_opt(local(n, cim_string))
              for n in ("Version", "FullVersion", "ProductUrl", "VendorUrl", "AppUrl")),
            _many(local("Icon", icon)),
            Particle(min=0, max=None, choice=(local("Category", msg), local("Property", prop))),
            other, extra=[("class", STRING, False), ("instance", STRING, False)])

    network_content: tuple[Particle, ...] = (_opt(local("Description", msg)),)
    if v20:
        assert epasd is not None
        profile = Complex("NetworkPortProfile", content=(_many(local("Item", epasd)), other))
        network_content += (Particle(min=0, max=None, choice=(
            local("NetworkPortProfile", profile),
            local("NetworkPortProfileURI", Complex("xs", simple=URI)))),)
    network = Complex("Network", content=network_content, attrs=attrs(("name", STRING, True)),
                      any_attr=True)
    section("NetworkSection", _many(local("Network", network)), other)

    disk_attrs = [("diskId", STRING, True), ("fileRef", STRING, False),
                  ("capacity", STRING, True), ("capacityAllocationUnits", STRING, False),
                  ("format", STRING, False), ("populatedSize", LONG, False),
                  ("parentRef", STRING, False)]
    disk = Complex("VirtualDiskDesc_Type", content=(other,), attrs=attrs(*disk_attrs),
                   any_attr=True)
    section("DiskSection", _many(local("Disk", disk)), other)
    section("OperatingSystemSection", _opt(local("Description", msg)), other,
            extra=[("id", USHORT, True), ("version", STRING, False)])
    section("EulaSection", _one(local("License", msg)), other)

    items = [_many(local("Item", rasd))]
    if v20:
        assert epasd is not None and sasd is not None
        items += [_many(local("EthernetPortItem", epasd)), _many(local("StorageItem", sasd))]
    section("VirtualHardwareSection", _opt(local("System", vssd)), *items, other,
            extra=[("transport", STRING, False)] + ([] if v10 else [("id", STRING, False)]))
    section("ResourceAllocationSection", *items, other)
    section("InstallSection", other, extra=[("initialBootStopDelay", USHORT, not v10)])
    delay = LONG if v10 else USHORT
    startup_item = Complex("StartupItem", content=(), attrs=attrs(
        ("id", STRING, True), ("order", delay, True), ("startDelay", delay, False),
        ("waitingForGuest", BOOLEAN, False), ("stopDelay", delay, False),
        ("startAction", STRING, False), ("stopAction", STRING, False)), any_attr=True)
    section("StartupSection", _many(local("Item", startup_item)), other)
    configuration = Complex("Configuration", content=(
        _one(local("Label", msg)), _one(local("Description", msg))),
        attrs=attrs(("id", STRING, True), ("default", BOOLEAN, False)), any_attr=True)
    section("DeploymentOptionSection", _many(local("Configuration", configuration), 1), other)
    if v10:
        security = Complex("Security", content=(_opt(local("Description", msg)),),
                           attrs=attrs(("name", STRING, True)), any_attr=True)
        section("SecuritySection", _many(local("Security", security)), other)
    if v20:
        env_file = Complex("EnvironmentFile_Type", content=(other,), attrs=attrs(
            ("fileRef", STRING, True), ("path", STRING, True)), any_attr=True)
        section("EnvironmentFilesSection", _many(local("File", env_file)), other,
                extra=[("transport", STRING, False)])
        section("BootDeviceSection", _one(elements[(NS_BOOTC, "CIM_BootConfigSetting")]))
        shared = Complex("SharedVirtualDiskDesc_Type", content=(other,), attrs=attrs(
            *disk_attrs, ("readOnly", BOOLEAN, False)), any_attr=True)
        section("SharedDiskSection", _many(local("SharedDisk", shared), 1), other)
        count = Complex("InstanceCount", content=(), attrs=attrs(
            ("minimum", UINT, False), ("default", UINT, True), ("maximum", UINT, False),
            ("configuration", STRING, False)), any_attr=True)
        section("ScaleOutSection", _opt(local("Description", msg)),
                _many(local("InstanceCount", count), 1), other, extra=[("id", STRING, True)])
        section("PlacementGroupSection", _opt(local("Description", msg)), other,
                extra=[("id", STRING, True), ("policy", STRING, True)])
        section("PlacementSection", other, extra=[("group", STRING, True)])
        # The key elements belong to XML Encryption's schema: named here, not looked into.
        section("EncryptionSection", Particle(min=1, max=None, choice=(
            Decl(NS_XENC11, "DerivedKey", _ANYTYPE), Decl(NS_XENC, "EncryptedKey", _ANYTYPE))))

    sections = frozenset(name for (ns, name) in elements
                         if ns == ovf and name.endswith("Section"))
    section_base = Complex("Section_Type", content=(info,), attrs=section_attrs,
                           any_attr=True, abstract=True)
    elements[(ovf, "Section")] = Decl(ovf, "Section", section_base)

    content_attrs = attrs(("id", STRING, True))
    content_head = (info, _opt(local("Name", msg)), Particle(min=0, max=None, group="Section"))
    vs = Complex("VirtualSystem_Type", content=content_head, attrs=content_attrs,
                 any_attr=True)
    vsc = Complex("VirtualSystemCollection_Type",
                  content=content_head + (Particle(min=0, max=None, group="Content"),),
                  attrs=content_attrs, any_attr=True)
    content_base = Complex("Content_Type", content=content_head, attrs=content_attrs,
                           any_attr=True, abstract=True)
    for ctype in (vs, vsc):
        types[ctype.name] = ctype
    elements[(ovf, "VirtualSystem")] = Decl(ovf, "VirtualSystem", vs)
    elements[(ovf, "VirtualSystemCollection")] = Decl(ovf, "VirtualSystemCollection", vsc)
    elements[(ovf, "Content")] = Decl(ovf, "Content", content_base)

    msg_attrs = [("msgid", STRING, True)] + ([("fileRef", STRING, False)] if v20 else [])
    strings_msg = Complex("Msg", simple=STRING, attrs=attrs(*msg_attrs), any_attr=True)
    strings = Complex("Strings_Type", content=(_many(local("Msg", strings_msg)),),
                      attrs={(NS_XML, "lang"): Attr(Simple("language")),
                             **attrs(("fileRef", STRING, False))}, any_attr=True)
    if not v10:
        elements[(ovf, "Strings")] = Decl(ovf, "Strings", strings)
    file_type = Complex("File_Type", content=(other,), attrs=attrs(
        ("id", STRING, True), ("href", URI, True), ("size", ULONG, False),
        ("compression", STRING, False), ("chunkSize", LONG, False)), any_attr=True)
    references = Complex("References_Type", content=(_many(local("File", file_type)), other),
                         any_attr=True)
    envelope = Complex("EnvelopeType", content=(
        _one(local("References", references)), Particle(min=0, max=None, group="Section"),
        Particle(min=1, max=1, group="Content"), _many(local("Strings", strings))),
        attrs={} if v10 else {(NS_XML, "lang"): Attr(Simple("language"))}, any_attr=True)
    elements[(ovf, "Envelope")] = Decl(ovf, "Envelope", envelope)

    global_attrs = {
        (NS_XML, "lang"): Simple("language"),
        (NS_XML, "space"): Simple("NCName", words=frozenset({"default", "preserve"})),
        (NS_XML, "base"): URI,
        (NS_XML, "id"): Simple("NCName"),
        (ovf, "required"): BOOLEAN,
        (NS_CIM, "Key"): BOOLEAN, (NS_CIM, "Version"): STRING, (NS_CIM, "qualifier"): BOOLEAN,
    }
    if not v10:
        global_attrs[(ovf, "transport")] = STRING
    if v20:
        global_attrs[(ovf, "configuration")] = STRING
        global_attrs[(ovf, "bound")] = STRING
    return Schema(version, ovf, elements, global_attrs, sections, types)


# ---------------------------------------------------------------------------------------------
# Walking a document against one schema


@dataclass(frozen=True)
class Issue:
    """One problem: rule id, source line, message, and the schema versions it holds for
    (empty for the version-independent DSP0243 rules)."""

    rule: str
    line: int | None
    message: str
    versions: frozenset[str] = frozenset()

    @property
    def xsd(self) -> bool:
        return self.rule in XSD_RULES

    def text(self, all_versions: Iterable[str] = ()) -> str:
        where = "line %d: " % self.line if self.line else ""
        only = ""
        if self.versions and set(self.versions) != set(all_versions):
            only = " (OVF %s schema)" % ", ".join(sorted(self.versions))
        return where + self.message + only


class _Walker:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.issues: list[Issue] = []
        self.depth = 0

    def add(self, rule: str, el: etree._Element, message: str) -> None:
        if len(self.issues) < _MAX_ISSUES:
            self.issues.append(Issue(rule, el.sourceline, message,
                                     frozenset({self.schema.version})))

    def name(self, el: etree._Element) -> str:
        q = etree.QName(el)
        return "<%s>" % _qname(q.namespace or "", q.localname)

    def root(self, el: etree._Element) -> None:
        q = etree.QName(el)
        decl = self.schema.elements.get((q.namespace or "", q.localname))
        if decl is None or q.localname != "Envelope":
            self.add("ovf.struct.element", el, "the root element %s is not an OVF %s Envelope"
                     % (self.name(el), self.schema.version))
            return
        self.element(el, decl)

    def resolve_type(self, el: etree._Element, decl: Decl) -> Complex | None:
        xsi_type = el.get("{%s}type" % NS_XSI)
        ctype = decl.type
        if xsi_type is None:
            if ctype.abstract:
                self.add("ovf.struct.element", el, "%s has an abstract type: use a concrete "
                         "section or VirtualSystem element" % self.name(el))
                return None
            return ctype
        prefix, _, local = xsi_type.strip().rpartition(":")
        ns = el.nsmap.get(prefix or None)
        named = self.schema.types.get(local) if ns == self.schema.ns else None
        allowed = (named is not None and (
            named is ctype
            or (ctype.name == "Section_Type" and local.endswith("Section_Type"))
            or (ctype.name == "Content_Type" and named.name in ("VirtualSystem_Type",
                                                                "VirtualSystemCollection_Type"))))
        if not allowed:
            self.add("ovf.struct.value", el, "%s: xsi:type %r is not a type derived from %s"
                     % (self.name(el), xsi_type, ctype.name))
            return None
        return named

    def element(self, el: etree._Element, decl: Decl) -> None:
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                self.add("ovf.struct.element", el, "elements nested deeper than %d levels"
                         % _MAX_DEPTH)
                return
            self.declared(el, decl)
        finally:
            self.depth -= 1

    def declared(self, el: etree._Element, decl: Decl) -> None:
        ctype = self.resolve_type(el, decl)
        if ctype is None:
            return
        nil = el.get("{%s}nil" % NS_XSI)
        is_nil = False
        if nil is not None:
            problem = _simple_problem(BOOLEAN, nil)
            if problem is not None:
                self.add("ovf.struct.value", el, "%s: xsi:nil %r is %s"
                         % (self.name(el), nil, problem))
            elif not decl.nillable:
                self.add("ovf.struct.attribute", el, "%s is not nillable" % self.name(el))
            else:
                is_nil = _collapse(nil) in ("true", "1")
        self.attributes(el, ctype)
        if ctype.any_content:
            self.lax_children(el)
            return
        children = [c for c in el if isinstance(c.tag, str)]
        text = (el.text or "") + "".join(c.tail or "" for c in el)
        if is_nil:
            if children or text:
                self.add("ovf.struct.value", el, "%s is xsi:nil but not empty" % self.name(el))
            return
        if ctype.simple is not None:
            if children:
                self.add("ovf.struct.element", children[0], "%s holds text only, not %s"
                         % (self.name(el), self.name(children[0])))
                return
            problem = _simple_problem(ctype.simple, text)
            if problem is not None:
                self.add("ovf.struct.value", el, "%s %r is %s"
                         % (self.name(el), _short(text), problem))
            return
        if text.strip():
            self.add("ovf.struct.value", el, "%s holds elements only, not text %r"
                     % (self.name(el), _short(text.strip())))
        self.content(el, ctype.content or (), children)

    def lax(self, el: etree._Element) -> None:
        """An element no schema declares, under a lax wildcard: its attributes and children
        are still checked wherever a schema does declare them."""
        for key, value in el.attrib.items():
            q = etree.QName(key)
            simple = self.schema.attributes.get((q.namespace or "", q.localname))
            if simple is not None:
                problem = _simple_problem(simple, value)
                if problem is not None:
                    self.add("ovf.struct.value", el, "%s %s=%r is %s" % (
                        self.name(el), _qname(q.namespace or "", q.localname), _short(value),
                        problem))
        self.lax_children(el)

    def lax_children(self, el: etree._Element) -> None:
        for child in el:
            if not isinstance(child.tag, str):
                continue
            q = etree.QName(child)
            decl = self.schema.elements.get((q.namespace or "", q.localname))
            if decl is not None:
                self.element(child, decl)
            else:
                self.depth += 1
                try:
                    if self.depth <= _MAX_DEPTH:
                        self.lax(child)
                finally:
                    self.depth -= 1

    def attributes(self, el: etree._Element, ctype: Complex) -> None:
        for key, value in el.attrib.items():
            q = etree.QName(key)
            ns = q.namespace or ""
            if ns == NS_XSI:
                continue  # type and nil are read above; schemaLocation hints are ignored
            attr = ctype.attrs.get((ns, q.localname))
            simple = attr.type if attr is not None else None
            if attr is None:
                if not ctype.any_attr:
                    self.add("ovf.struct.attribute", el, "%s has no attribute %s"
                             % (self.name(el), _qname(ns, q.localname)))
                    continue
                # Wildcard attributes are checked when a schema declares them (lax).
                simple = self.schema.attributes.get((ns, q.localname))
            if simple is not None:
                problem = _simple_problem(simple, value)
                if problem is not None:
                    self.add("ovf.struct.value", el, "%s %s=%r is %s"
                             % (self.name(el), _qname(ns, q.localname), _short(value), problem))
        for (ns, name), attr in ctype.attrs.items():
            if attr.required and el.get("{%s}%s" % (ns, name)) is None:
                unqualified = " (it has an unqualified %s: attributes need the ovf: prefix)" % (
                    name) if el.get(name) is not None else ""
                self.add("ovf.struct.missing", el, "%s needs attribute %s%s"
                         % (self.name(el), _qname(ns, name), unqualified))

    def accepts(self, particle: Particle, child: etree._Element) -> Decl | None | bool:
        """The declaration ``child`` matches under ``particle``; True for a wildcard match of an
        element no schema declares (skipped); None when it does not match."""
        q = etree.QName(child)
        key = (q.namespace or "", q.localname)
        if particle.decl is not None:
            return particle.decl if (particle.decl.ns, particle.decl.name) == key else None
        if particle.choice:
            return next((d for d in particle.choice if (d.ns, d.name) == key), None)
        if particle.group is not None:
            if key[0] != self.schema.ns:
                return None
            if particle.group == "Section":
                if key[1] in self.schema.sections or key[1] == "Section":
                    return self.schema.elements[key]
                return None
            if key[1] in ("VirtualSystem", "VirtualSystemCollection", "Content"):
                return self.schema.elements[key]
            return None
        # ##other: a namespace, and not the one of the schema that holds the wildcard.
        if not key[0] or key[0] == particle.other_than:
            return None
        return self.schema.elements.get(key, True)

    def content(self, el: etree._Element, particles: tuple[Particle, ...],
                children: list[etree._Element]) -> None:
        at = 0
        for particle in particles:
            count = 0
            while at < len(children) and (particle.max is None or count < particle.max):
                decl = self.accepts(particle, children[at])
                if decl is None:
                    break
                if isinstance(decl, Decl):
                    self.element(children[at], decl)
                else:
                    self.lax(children[at])
                at += 1
                count += 1
            if count < particle.min:
                expected = " or ".join(particle.names(self.schema))
                if at >= len(children):
                    self.add("ovf.struct.missing", el, "%s lacks %s" % (self.name(el), expected))
                elif self.matches_any(particles[:particles.index(particle)], children[at]):
                    self.add("ovf.struct.element", children[at], "%s: %s is out of order "
                             "(expected %s here)" % (self.name(el), self.name(children[at]),
                                                     expected))
                elif self.matches_any(particles[particles.index(particle) + 1:], children[at]):
                    self.add("ovf.struct.missing", children[at], "%s lacks %s (found %s "
                             "where it must come)" % (self.name(el), expected,
                                                      self.name(children[at])))
                else:
                    self.add("ovf.struct.element", children[at], "%s: %s is not allowed here "
                             "(%s must come next)%s" % (self.name(el), self.name(children[at]),
                                                        expected, self.not_a_section(
                                                            children[at])))
                return
        if at < len(children):
            self.add("ovf.struct.element", children[at], "%s: %s is not allowed here%s%s"
                     % (self.name(el), self.name(children[at]),
                        " (out of order or repeated)"
                        if self.matches_any(particles, children[at]) else "",
                        self.not_a_section(children[at])))

    def matches_any(self, particles: Iterable[Particle], child: etree._Element) -> bool:
        return any(self.accepts(p, child) is not None and p.other_than is None
                   for p in particles)

    def not_a_section(self, child: etree._Element) -> str:
        q = etree.QName(child)
        if q.namespace == self.schema.ns and q.localname.endswith("Section") \
                and q.localname not in self.schema.sections:
            return " (not a section this OVF schema defines)"
        if q.namespace != self.schema.ns and (q.localname.endswith("Section")):
            return " (a vendor section is not in the ovf:Section substitution group)"
        return ""


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# DSP0243 rules the XSDs cannot express

# DSP0004 Annex C standard base units (programmatic units), lowercase.
_BASE_UNITS = frozenset(word.replace("-", " ") for word in """
percent permille decibel count revolution degree radian steradian bit byte dataword msu meter
inch rack-unit foot yard mile liter fluid-ounce liquid-gallon mole kilogram ounce pound second
minute hour day week gravity degree-celsius degree-fahrenheit kelvin candela lumen nit lux
newton pascal bar joule watt volt-ampere volt-ampere-reactive british-thermal-unit ampere
coulomb volt farad ohm siemens weber tesla henry becquerel gray sievert hertz""".split())
_PREFIX_FACTORS = {
    "deca": (10, 1), "hecto": (10, 2), "kilo": (10, 3), "mega": (10, 6), "giga": (10, 9),
    "tera": (10, 12), "peta": (10, 15), "exa": (10, 18), "zetta": (10, 21), "yotta": (10, 24),
    "deci": (10, -1), "centi": (10, -2), "milli": (10, -3), "micro": (10, -6),
    "nano": (10, -9), "pico": (10, -12), "femto": (10, -15), "atto": (10, -18),
    "zepto": (10, -21), "yocto": (10, -24),
    "kibi": (2, 10), "mebi": (2, 20), "gibi": (2, 30), "tebi": (2, 40), "pebi": (2, 50),
    "exbi": (2, 60), "zebi": (2, 70), "yobi": (2, 80),
}
_UNIT_TOKEN = re.compile(r"\s*(?:(\*|/)\s*)?("
                         r"[0-9]+\s*\^\s*[+-]?[1-9][0-9]*"      # 2^20, 10^-3
                         r"|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[1-9][0-9]*)?"  # 1024, 0.5
                         r"|[A-Za-z_][A-Za-z0-9_()\- ]*?[A-Za-z0-9_()]"   # unit names
                         r"(?::[A-Za-z_][A-Za-z0-9_()\- ]*?[A-Za-z0-9_()])?"
                         r"|[A-Za-z_])\s*(?=\*|/|\Z)")


@dataclass(frozen=True)
class Unit:
    """A parsed programmatic unit: its base units (extension units as ``org:name``) and the
    numeric factor as a fraction ``numerator / denominator``."""

    units: tuple[str, ...]
    numerator: int
    denominator: int


def parse_programmatic_unit(text: str) -> Unit | None:
    """Parse a DSP0004 programmatic unit ("byte * 2^20", "hertz * 10^6", "kilobyte",
    "acme:widget * 8"); None when the text is not one."""
    if text is None or len(text) > _MAX_UNIT_CHARS:
        return None
    rest = text.strip()
    if rest.startswith("-"):
        return None  # a negative allocation unit means nothing here
    units: list[str] = []
    num, den = 1, 1
    first = True
    while rest:
        m = _UNIT_TOKEN.match(rest)
        if m is None or (first and m.group(1)) or (not first and not m.group(1)):
            return None
        divide = m.group(1) == "/"
        token = m.group(2).strip()
        rest = rest[m.end():]
        first = False
        if token[0].isdigit():
            if "^" in token:
                base_text, _, exp_text = token.partition("^")
                base, exp = int(base_text), int(exp_text)
                if base < 1 or abs(exp) > 100 or (base_text.strip().startswith("0")):
                    return None
                f_num, f_den = (base ** exp, 1) if exp >= 0 else (1, base ** -exp)
            else:
                if re.fullmatch(r"0[0-9]+", token):
                    return None
                if any(c in token for c in ".eE"):
                    from fractions import Fraction  # here: rare, and slow to import
                    value = Fraction(token)
                    if value <= 0:
                        return None
                    f_num, f_den = value.numerator, value.denominator
                else:
                    f_num, f_den = int(token), 1
                    if f_num == 0:
                        return None
            if divide:
                f_num, f_den = f_den, f_num
            num, den = num * f_num, den * f_den
            if num > _MAX_FACTOR or den > _MAX_FACTOR:
                return None  # no unit is this large; keeps the arithmetic small
            continue
        name = " ".join(token.split())
        lower = name.lower()
        if ":" in name:
            units.append(("/" if divide else "") + name)
            continue
        factor = (1, 0)
        if lower not in _BASE_UNITS:
            for prefix, pf in _PREFIX_FACTORS.items():
                if lower.startswith(prefix) and lower[len(prefix):] in _BASE_UNITS:
                    factor, lower = pf, lower[len(prefix):]
                    break
            else:
                return None
        base, exp = factor
        f_num, f_den = (base ** exp, 1) if exp >= 0 else (1, base ** -exp)
        if divide:
            f_num, f_den = f_den, f_num
        num, den = num * f_num, den * f_den
        units.append(("/" if divide else "") + lower)
    if not units and first:
        return None
    return Unit(tuple(units), num, den)


def _byte_unit_problem(text: str) -> str | None:
    unit = parse_programmatic_unit(text)
    if unit is None:
        return "not a DSP0004 programmatic unit"
    if unit.units != ("byte",):
        return "its base unit is not byte"
    if unit.numerator % unit.denominator:
        return "not a whole number of bytes"
    return None


_PROPERTY_TYPES = frozenset({"uint8", "sint8", "uint16", "sint16", "uint32", "sint32", "uint64",
                             "sint64", "string", "boolean", "real32", "real64"})
_START_ACTIONS = frozenset({"powerOn", "none"})
_STOP_ACTIONS = frozenset({"powerOff", "guestShutdown", "none"})


class _Spec:
    """The prose rules of DSP0243, run once per document (namespace-aware, version-free)."""

    def __init__(self, root: etree._Element, ns: str) -> None:
        self.root = root
        self.ns = ns
        self.issues: list[Issue] = []

    def add(self, rule: str, el: etree._Element, message: str) -> None:
        if len(self.issues) < _MAX_ISSUES:
            self.issues.append(Issue(rule, el.sourceline, message))

    def attr(self, el: etree._Element, name: str) -> str | None:
        return el.get("{%s}%s" % (self.ns, name))

    def ovf(self, name: str) -> str:
        return "{%s}%s" % (self.ns, name)

    def iter(self, *names: str) -> Iterator[etree._Element]:
        yield from self.root.iter(*(self.ovf(n) for n in names))

    def run(self) -> list[Issue]:
        files = {self.attr(f, "id") for f in self.root.iterfind(
            "%s/%s" % (self.ovf("References"), self.ovf("File")))}
        configurations = self.configurations()
        self.units()
        self.references(files, configurations)
        self.properties()
        self.content_ids()
        return self.issues

    def configurations(self) -> set[str]:
        ids: set[str] = set()
        for section in self.iter("DeploymentOptionSection"):
            defaults = 0
            for conf in section.iterchildren(self.ovf("Configuration")):
                conf_id = self.attr(conf, "id")
                if conf_id is None:
                    continue  # the schema rules report it
                if conf_id in ids:
                    self.add("ovf.struct.unique", conf, "Configuration ovf:id %r is used twice"
                             % conf_id)
                ids.add(conf_id)
                if _collapse(self.attr(conf, "default") or "") in ("true", "1"):
                    defaults += 1
            if defaults > 1:
                self.add("ovf.struct.unique", section, "%d Configurations are marked "
                         "ovf:default=\"true\"; at most one may be" % defaults)
        return ids

    def units(self) -> None:
        for disk in self.iter("Disk", "SharedDisk"):
            units = self.attr(disk, "capacityAllocationUnits")
            if units is not None:
                problem = _byte_unit_problem(units)
                if problem is not None:
                    self.add("ovf.struct.units", disk, "Disk %s ovf:capacityAllocationUnits %r "
                             "is %s" % (self.attr(disk, "diskId"), _short(units), problem))
        for ns in (NS_RASD, NS_EPASD, NS_SASD):
            for el in self.root.iter("{%s}AllocationUnits" % ns, "{%s}VirtualQuantityUnits" % ns):
                if el.get("{%s}nil" % NS_XSI) in ("true", "1"):
                    continue
                text = el.text or ""
                item = el.getparent()
                rtype = item.findtext("{%s}ResourceType" % ns) if item is not None else None
                memory = rtype is not None and rtype.strip() == str(_RT_MEMORY)
                what = "%s %r" % (etree.QName(el).localname, _short(text))
                if memory and etree.QName(el).localname == "AllocationUnits":
                    problem = _byte_unit_problem(text)
                    if problem is not None:
                        self.add("ovf.struct.units", el, "memory Item %s is %s (use "
                                 "'byte * 2^20' with VirtualQuantity in MiB)" % (what, problem))
                elif parse_programmatic_unit(text) is None:
                    self.add("ovf.struct.units", el, "%s is not a DSP0004 programmatic unit "
                             "(e.g. 'byte * 2^20', 'hertz * 10^6', 'count')" % what)

    def references(self, files: set[str | None], configurations: set[str]) -> None:
        for section in self.iter("DiskSection"):
            disk_ids = {self.attr(d, "diskId") for d in section.iterchildren(self.ovf("Disk"))}
            for disk in section.iterchildren(self.ovf("Disk")):
                parent = self.attr(disk, "parentRef")
                if parent is not None and parent not in disk_ids:
                    self.add("ovf.struct.ref", disk, "Disk %s ovf:parentRef %r names no Disk "
                             "of its DiskSection" % (self.attr(disk, "diskId"), parent))
        for el in self.iter("Icon", "Strings", "Msg", "File"):
            local = etree.QName(el).localname
            if local == "File" and (el.getparent() is None or etree.QName(el.getparent())
                                    .localname != "EnvironmentFilesSection"):
                continue
            ref = self.attr(el, "fileRef")
            if ref is not None and ref not in files:
                self.add("ovf.struct.ref", el, "%s ovf:fileRef %r names no File in "
                         "References" % (local, ref))
        for el in self.root.iter():
            if not isinstance(el.tag, str):
                continue
            names = self.attr(el, "configuration")
            if names is None:
                continue
            for name in names.split():
                if name not in configurations:
                    self.add("ovf.struct.ref", el, "%s ovf:configuration names %r, which no "
                             "DeploymentOptionSection Configuration defines"
                             % (etree.QName(el).localname, name))
        for section in self.iter("StartupSection"):
            owner = section.getparent()
            members = {self.attr(c, "id") for c in owner.iterchildren(
                self.ovf("VirtualSystem"), self.ovf("VirtualSystemCollection"))} \
                if owner is not None else set()
            for item in section.iterchildren(self.ovf("Item")):
                item_id = self.attr(item, "id")
                if item_id is not None and item_id not in members:
                    self.add("ovf.struct.ref", item, "StartupSection Item ovf:id %r names no "
                             "VirtualSystem or VirtualSystemCollection of the collection it "
                             "describes" % item_id)
                for name, allowed in (("startAction", _START_ACTIONS),
                                      ("stopAction", _STOP_ACTIONS)):
                    value = self.attr(item, name)
                    if value is not None and value not in allowed:
                        self.add("ovf.struct.enum", item, "StartupSection Item ovf:%s %r is "
                                 "not one of %s" % (name, value, ", ".join(sorted(allowed))))
        groups = {self.attr(g, "id") for g in self.iter("PlacementGroupSection")}
        for placement in self.iter("PlacementSection"):
            group = self.attr(placement, "group")
            if group is not None and group not in groups:
                self.add("ovf.struct.ref", placement, "PlacementSection ovf:group %r names no "
                         "PlacementGroupSection" % group)

    def properties(self) -> None:
        for prop in self.iter("Property"):
            ptype = self.attr(prop, "type")
            if ptype is not None and ptype not in _PROPERTY_TYPES:
                self.add("ovf.struct.enum", prop, "Property %s ovf:type %r is not one of %s"
                         % (self.attr(prop, "key"), ptype, ", ".join(sorted(_PROPERTY_TYPES))))

    def content_ids(self) -> None:
        seen: set[str] = set()
        for el in self.iter("VirtualSystem", "VirtualSystemCollection"):
            content_id = self.attr(el, "id")
            if content_id is None:
                continue
            if content_id in seen:
                self.add("ovf.struct.unique", el, "%s ovf:id %r is used twice"
                         % (etree.QName(el).localname, content_id))
            seen.add(content_id)


# ---------------------------------------------------------------------------------------------
# Entry points


@dataclass
class Report:
    """What the structural validation found, for one document."""

    versions: tuple[str, ...]
    issues: list[Issue]

    def ok(self, version: str | None = None, *, xsd_only: bool = False) -> bool:
        """No issue (for ``version``; only the rules the XSDs also enforce if ``xsd_only``)."""
        for issue in self.issues:
            if xsd_only and not issue.xsd:
                continue
            if version is None or not issue.versions or version in issue.versions:
                return False
        return True


def check(root: etree._Element, versions: tuple[str, ...] | None = None) -> Report:
    """Check an OVF 1.x/2.x envelope against the schema tables of ``versions`` (default:
    every version of its namespace) and the DSP0243 rules.  Namespace-aware: prefixes and
    default namespaces are equivalent."""
    ns = etree.QName(root).namespace or ""
    if versions is None:
        versions = VERSIONS_FOR_NAMESPACE.get(ns, ())
    per_version: dict[tuple[str, int | None, str], set[str]] = {}
    order: list[tuple[str, int | None, str]] = []
    for version in versions:
        walker = _Walker(schema_model(version))
        walker.root(root)
        for issue in walker.issues:
            key = (issue.rule, issue.line, issue.message)
            if key not in per_version:
                per_version[key] = set()
                order.append(key)
            per_version[key].add(version)
    issues = [Issue(rule, line, message, frozenset(per_version[(rule, line, message)]))
              for rule, line, message in order]
    if ns in VERSIONS_FOR_NAMESPACE:
        issues += _Spec(root, ns).run()
    return Report(tuple(versions), issues)


def check_findings(root: etree._Element, *, path: str) -> list[Finding]:
    """:func:`check` as error findings for ``verify --strict`` (and the strict reader)."""
    report = check(root)
    return [Finding(issue.rule, "error", location(path), None, issue.text(report.versions))
            for issue in report.issues]


def strict_validators(namespace: str,
                      schema_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """What ``--strict`` runs on a descriptor of this envelope namespace: "structure" and one
    "dmtf-xsd VERSION" per installed schema (none for OVF 0.9 and unknown namespaces)."""
    if namespace not in VERSIONS_FOR_NAMESPACE:
        return []
    _, versions = schema.versions_for(namespace, schema_dir)
    return ["structure"] + ["dmtf-xsd " + v for v in versions]
