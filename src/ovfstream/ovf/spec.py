"""VM spec files (TOML, YAML, JSON) and flag mappings -> :class:`VirtualMachine`.

The keys are the ``pack`` options of the CLI contract (DESIGN.md "Command line and library"),
with the values and limits of FORMATS.md section 5.1 as checked by :mod:`.model`::

    name, annotation, cpus, cores_per_socket, memory (MiB), os, firmware, secure_boot,
    controller, scsi_type, disk_slots, nics, cdrom, hw_version (int or "vmx-NN"),
    product {product, vendor, version, full_version, product_url, vendor_url, transport,
             properties [{key, type, default, user_configurable, label, description,
                          qualifiers}]},
    eula (text) | eula_file (path, relative to the spec file),
    target (a preset of ovf/targets.py: vsphere8, proxmox, ...)

``nics`` is a list of ``"NET[:TYPE]"`` strings or ``{network, type}`` tables;
``disk_slots`` (disk i's controller, boot disk first) a list of ``"CONTROLLER[:SCSI_TYPE]"``
strings or ``{controller, scsi_type}`` tables.  Every error is a :class:`UsageError` naming
the key path (``product.properties[1].type``), the value and what is allowed.

Layering: ``vm = vm_from_mapping(file_mapping)`` then
``vm_from_mapping(flag_mapping, base=vm)``: only keys present (and not None) in the second
mapping override; ``controller``/``scsi_type`` override the default slot field by field and
``product`` keys override the base product key by key (``properties`` as a whole).

Targets: :func:`vm_from_layers` merges the layers (spec file, then flags) and builds the VM on
the preset of ``target`` (hardware version, controller, NIC type, default guest): explicit
keys win over the preset, a NIC given without a type takes the preset's type.  A ``target``
key in a mapping given to :func:`vm_from_mapping` without a base does the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import reprlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import UsageError
from .model import (
    CONTROLLERS,
    NIC_ADAPTERS,
    SCSI_TYPES,
    DiskSlot,
    Nic,
    Product,
    Property,
    VirtualMachine,
)

if TYPE_CHECKING:  # pathlib loads when a spec file or EULA file is read
    from pathlib import Path

__all__ = ["SPEC_KEYS", "PRODUCT_KEYS", "PROPERTY_KEYS", "load_spec", "load_table",
           "absolute_eula", "vm_from_mapping",
           "vm_from_layers", "parse_nic", "parse_slot"]

SPEC_KEYS: tuple[str, ...] = (
    "name", "annotation", "cpus", "cores_per_socket", "memory", "os", "firmware",
    "secure_boot", "controller", "scsi_type", "disk_slots", "nics", "cdrom", "hw_version",
    "product", "eula", "eula_file", "target")
PRODUCT_KEYS: tuple[str, ...] = (
    "product", "vendor", "version", "full_version", "product_url", "vendor_url", "transport",
    "properties")
PROPERTY_KEYS: tuple[str, ...] = (
    "key", "type", "default", "user_configurable", "label", "description", "qualifiers")
_NIC_KEYS = ("network", "type")
_SLOT_KEYS = ("controller", "scsi_type")

# Spec key -> VirtualMachine field, where they differ.
_FIELD = {"memory": "memory_mib"}
_HW_RE = re.compile(r"^vmx-(\d{1,2})$")
# Keep a hostile spec from making us read a huge "EULA".
_MAX_EULA_BYTES = 1 << 20
# A spec is a few hundred bytes; a bounded read also keeps /dev/zero or an endless pipe out.
MAX_SPEC_BYTES = 1 << 20
# Values quoted in errors: YAML anchors can make a small file name a structure of billions of
# (shared) elements, and a plain repr() would walk all of them.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 8
_REPR.maxlevel = 3

T = TypeVar("T")


def _bad(path: str, value: object, allowed: str) -> UsageError:
    return UsageError("%s: %s is not allowed (%s)" % (path, _REPR.repr(value), allowed))


def _relabel(path: str, model_prefix: str, build: Callable[[], T]) -> T:
    """Run a model constructor; re-anchor its error from the model's field name to ``path``."""
    try:
        return build()
    except UsageError as exc:
        text = str(exc)
        if text.startswith(model_prefix):
            text = path + text[len(model_prefix):]
        raise UsageError(text) from None


def _mapping(path: str, value: object, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(path, value, "a table with keys " + ", ".join(keys))
    for key in value:
        if key not in keys:
            where = "%s.%s" % (path, key) if path else str(key)
            raise UsageError("%s: unknown key (allowed: %s)" % (where, ", ".join(keys)))
    return value


def _str(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(path, value, "a string")
    return value


def _int(path: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(path, value, "an integer")
    return value


def _bool(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, value, "true or false")
    return value


def _list(path: str, value: object) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _bad(path, value, "a list")
    return list(value)


def parse_nic(text: str, *, path: str = "nics", default_type: str = "e1000") -> Nic:
    """``"NET"`` or ``"NET:TYPE"`` (TYPE one of e1000, e1000e, vmxnet3) -> Nic; ``"NET"``
    gets ``default_type`` (a target's NIC type)."""
    _str(path, text)
    network, adapter = text, default_type
    if ":" in text:
        network, _, adapter = text.rpartition(":")
        if adapter not in NIC_ADAPTERS:
            raise _bad(path, text, "NET or NET:TYPE with TYPE one of " + ", ".join(NIC_ADAPTERS))
    if not network:
        raise _bad(path, text, "NET or NET:TYPE with a non-empty network name")
    return _relabel(path, "nic", lambda: Nic(network=network, adapter=adapter))  # type: ignore[arg-type]


def parse_slot(text: str, *, path: str = "disk_slots") -> DiskSlot:
    """``"CONTROLLER"`` or ``"scsi:SCSI_TYPE"`` -> DiskSlot."""
    _str(path, text)
    controller, sep, scsi_type = text.partition(":")
    if controller not in CONTROLLERS or (sep and (
            controller != "scsi" or scsi_type not in SCSI_TYPES)):
        raise _bad(path, text, "one of %s, or scsi:TYPE with TYPE one of %s"
                   % (", ".join(CONTROLLERS), ", ".join(SCSI_TYPES)))
    return DiskSlot(controller=controller, scsi_type=scsi_type or "lsilogic")  # type: ignore[arg-type]


def _nic(path: str, value: object, default_type: str = "e1000") -> Nic:
    if isinstance(value, str):
        return parse_nic(value, path=path, default_type=default_type)
    table = _mapping(path, value, _NIC_KEYS)
    kwargs: dict[str, Any] = {"adapter": default_type}
    if "network" in table:
        kwargs["network"] = _str(path + ".network", table["network"])
    if "type" in table:
        kwargs["adapter"] = _str(path + ".type", table["type"])
    return _relabel(path, "nic", lambda: Nic(**kwargs))


def _slot(path: str, value: object) -> DiskSlot:
    if isinstance(value, str):
        return parse_slot(value, path=path)
    table = _mapping(path, value, _SLOT_KEYS)
    kwargs = {k: _str("%s.%s" % (path, k), table[k]) for k in _SLOT_KEYS if k in table}
    return _relabel(path + ".", "", lambda: DiskSlot(**kwargs))


def _hw_version(value: object) -> int:
    if isinstance(value, str):
        match = _HW_RE.match(value)
        if match:
            return int(match.group(1))
        raise _bad("hw_version", value, "an integer or \"vmx-NN\"")
    return _int("hw_version", value)


def _property(path: str, value: object) -> Property:
    table = _mapping(path, value, PROPERTY_KEYS)
    if "key" not in table:
        raise UsageError("%s.key: missing (every property needs a key)" % path)
    kwargs: dict[str, Any] = {}
    for key in PROPERTY_KEYS:
        if key not in table:
            continue
        item = table[key]
        if key == "user_configurable":
            kwargs[key] = _bool(path + "." + key, item)
        elif key == "default" and isinstance(item, bool):
            # TOML/YAML booleans and numbers are what a user means by the property's text.
            kwargs[key] = "true" if item else "false"
        elif key == "default" and isinstance(item, (int, float)):
            kwargs[key] = str(item)
        else:
            kwargs[key] = _str(path + "." + key, item)
    return _relabel(path, "property", lambda: Property(**kwargs))


def _product(value: object, base: Product | None) -> Product:
    table = _mapping("product", value, PRODUCT_KEYS)
    kwargs: dict[str, Any] = {}
    for key in PRODUCT_KEYS:
        if key not in table or (table[key] is None and key != "transport"):
            continue
        item = table[key]
        path = "product." + key
        if key == "properties":
            kwargs[key] = tuple(_property("%s[%d]" % (path, i), p)
                                for i, p in enumerate(_list(path, item)))
        elif key == "transport":
            # "" or null: no transport (properties then only document the appliance).
            kwargs[key] = None if item in (None, "") else _str(path, item)
        else:
            kwargs[key] = _str(path, item)
    if base is not None:
        return _relabel("product", "product", lambda: dataclasses.replace(base, **kwargs))
    return _relabel("product", "product", lambda: Product(**kwargs))


def _read_eula(value: object, base_dir: Path | None) -> str:
    from pathlib import Path
    path = Path(_str("eula_file", value))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_EULA_BYTES + 1)
    except OSError as exc:
        raise _bad("eula_file", str(path), "a readable file: %s" % exc.strerror) from None
    if len(data) > _MAX_EULA_BYTES:
        raise _bad("eula_file", str(path), "a file of at most %d bytes" % _MAX_EULA_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("eula_file", str(path), "UTF-8 text") from None


def vm_from_mapping(mapping: Mapping[str, object], *, base: VirtualMachine | None = None,
                    base_dir: str | os.PathLike[str] | None = None,
                    nic_type: str = "e1000") -> VirtualMachine:
    """Build (or, with ``base``, override) a VirtualMachine from spec keys.

    ``base_dir`` anchors a relative ``eula_file`` (``load_spec`` already makes it absolute).
    Keys whose value is None count as absent, so an argparse namespace can be passed as is.
    ``nic_type`` is the type of a NIC given without one.  A ``target`` key builds on that
    preset (:func:`vm_from_layers`); it is refused together with ``base``, whose values the
    preset would silently replace.
    """
    table = _mapping("", mapping, SPEC_KEYS)
    present = {k: v for k, v in table.items() if v is not None}
    if "target" in present:
        if base is not None:
            raise UsageError("target: give it where the VM is first described (a spec without "
                             "a base, or vm_from_layers/--target), not as an override")
        name = present.get("name")
        rest = {k: v for k, v in present.items() if k != "target"}
        return vm_from_layers([rest], name=_str("name", name) if name is not None else None,
                              target=present["target"], base_dir=base_dir)
    anchor = None
    if base_dir is not None:
        from pathlib import Path
        anchor = Path(base_dir)
    if "eula" in present and "eula_file" in present:
        raise UsageError("eula_file: give either eula or eula_file, not both")

    changes: dict[str, Any] = {}
    for key, value in present.items():
        if key in ("name", "annotation", "os", "firmware"):
            changes[key] = _str(key, value)
        elif key in ("cpus", "cores_per_socket", "memory"):
            changes[_FIELD.get(key, key)] = _int(key, value)
        elif key in ("secure_boot", "cdrom"):
            changes[key] = _bool(key, value)
        elif key == "hw_version":
            changes[key] = _hw_version(value)
        elif key == "nics":
            changes[key] = tuple(_nic("nics[%d]" % i, n, nic_type)
                                 for i, n in enumerate(_list(key, value)))
        elif key == "disk_slots":
            changes[key] = tuple(_slot("disk_slots[%d]" % i, s)
                                 for i, s in enumerate(_list(key, value)))
        elif key == "product":
            changes[key] = _product(value, base.product if base is not None else None)
        elif key == "eula":
            changes[key] = _str(key, value)
        elif key == "eula_file":
            changes["eula"] = _read_eula(value, anchor)

    if "controller" in present or "scsi_type" in present:
        slot = base.default_slot if base is not None else DiskSlot()
        fields = {k: _str(k, present[k]) for k in _SLOT_KEYS if k in present}
        changes["default_slot"] = _relabel("", "", lambda: dataclasses.replace(slot, **fields))

    if base is not None:
        return dataclasses.replace(base, **changes)
    if "name" not in changes:
        raise UsageError("name: missing (every VM needs a name)")
    return VirtualMachine(**changes)


def _merge(layers: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """One mapping: later layers' keys (not None) win; ``product`` merges key by key and an
    ``eula`` replaces an earlier ``eula_file`` (and the reverse)."""
    merged: dict[str, object] = {}
    for i, layer in enumerate(layers):
        table = _mapping("", layer, SPEC_KEYS)
        for key, value in table.items():
            if value is None:
                continue
            if key == "product" and isinstance(merged.get("product"), Mapping) and \
                    isinstance(value, Mapping):
                value = {**merged["product"], **value}  # type: ignore[dict-item]
            if key in ("eula", "eula_file"):
                merged.pop("eula_file" if key == "eula" else "eula", None)
                if "eula" in table and "eula_file" in table and \
                        table["eula"] is not None and table["eula_file"] is not None:
                    raise UsageError("eula_file: give either eula or eula_file, not both")
            merged[key] = value
    return merged


def vm_from_layers(layers: Sequence[Mapping[str, object]], *, name: str | None,
                   target: object = None,
                   base_dir: str | os.PathLike[str] | None = None) -> VirtualMachine:
    """The VM of ``layers`` (e.g. [spec file, flags]: later wins) built on ``target``'s preset.

    ``name`` is the VM name unless a layer gives one.  Without a target (None) this is
    ``vm_from_mapping`` of the merged layers on the plain defaults.  With one, the preset sets
    hw_version (and VirtualBox's system type), the default controller, the NIC type of NICs
    given without one (and of the default NIC), the sata spelling and, when no layer names
    a guest, the OS; everything a layer gives wins.  A layer's ``target`` key is ignored here
    (the caller resolved it).
    """
    merged = _merge([{k: v for k, v in layer.items() if k != "target"} for layer in layers])
    if name is None and "name" not in merged:
        raise UsageError("name: missing (every VM needs a name)")
    base_name = name if name is not None else _str("name", merged["name"])
    if target is None:
        return vm_from_mapping(merged, base=VirtualMachine(name=base_name), base_dir=base_dir)
    from . import targets  # (only here: targets imports the model only; spec is its caller)
    preset = targets.get_target(target)
    os_key = merged.get("os")
    os_text = os_key if isinstance(os_key, str) else None
    hw_given = "hw_version" in merged
    fields = targets.vm_fields(preset, os_text, hw_given=hw_given)
    if "scsi_type" in merged and "controller" not in merged:
        # The preset's controller may be SATA; a SCSI model names a SCSI controller.
        fields["default_slot"] = DiskSlot(controller="scsi")
    try:
        base = VirtualMachine(name=base_name, **fields)
        return vm_from_mapping(merged, base=base, base_dir=base_dir,
                               nic_type=preset.nic_type(os_text))
    except UsageError as exc:
        raise targets.explain(exc, preset, hw_given=hw_given) from None


def load_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a spec file by its suffix: .toml, .yaml/.yml or .json -> dict.

    A relative ``eula_file`` is made absolute against the spec file's folder.
    """
    from pathlib import Path
    return absolute_eula(load_table(path, what="spec", keys=SPEC_KEYS), Path(path))


def absolute_eula(table: dict[str, Any], anchor: Path) -> dict[str, Any]:
    """``table`` with a relative ``eula_file`` made absolute against the folder of
    ``anchor`` (the file the table came from)."""
    from pathlib import Path
    result = dict(table)
    eula_file = result.get("eula_file")
    if isinstance(eula_file, str) and not Path(eula_file).is_absolute():
        result["eula_file"] = str(anchor.resolve().parent / eula_file)
    return result


def load_table(path: str | os.PathLike[str], *, what: str,
               keys: Sequence[str]) -> dict[str, Any]:
    """A TOML, YAML or JSON file (by suffix) that holds one table -> dict; ``what`` names
    the file in errors (``spec``, ``jobs``), ``keys`` what it may hold."""
    from pathlib import Path
    spec_path = Path(path)
    suffix = spec_path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise _bad(what, os.fspath(path), "a .toml, .yaml, .yml or .json file")
    with open(spec_path, "rb") as handle:
        data = handle.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise UsageError("%s: %s is larger than %d bytes" % (what, spec_path, MAX_SPEC_BYTES))
    import yaml  # here: a run without a spec file loads no parser
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 (pyproject declares tomli there)
        import tomli as tomllib
    try:
        if suffix == ".toml":
            loaded: object = tomllib.loads(data.decode("utf-8"))
        elif suffix == ".json":
            loaded = json.loads(data)
        else:
            loaded = yaml.safe_load(data)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError,
            UnicodeDecodeError, ValueError) as exc:
        # ValueError: json refuses an integer of more than 4300 digits.
        raise UsageError("%s: %s cannot be parsed: %s"
                         % (what, spec_path, _REPR.repr(str(exc))[1:-1])) from None
    except RecursionError:
        # All three parsers recurse per nesting level; the stack is unwound by now.
        raise UsageError("%s: %s is nested too deeply to be a %s file" % (what, spec_path, what)
                         ) from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
        raise UsageError("%s: %s must hold a table of keys (%s)"
                         % (what, spec_path, ", ".join(keys)))
    return dict(loaded)
