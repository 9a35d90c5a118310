"""ovfstream: raw disks to OVF/OVA appliances in one pass."""
