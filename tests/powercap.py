"""A powercap class folder as the Linux kernel shows it (Documentation/power/powercap/
powercap.rst; /sys/class/powercap lists every zone flat: intel-rapl:0, intel-rapl:0:0 ...),
built in a temporary folder for the energy tests and bench/energy.py."""

from pathlib import Path

# max_energy_range_uj of a real package zone (Intel: 2^32 - 1 counts of 61.04 µJ) and DRAM
PACKAGE_RANGE_UJ = 262143328850
DRAM_RANGE_UJ = 65712999613


def write_zone(root: Path, zone: str, name: str, energy_uj: int,
               max_energy_range_uj: int = PACKAGE_RANGE_UJ) -> Path:
    """One zone: the files a reader needs, and constraint files it must ignore."""
    folder = root / zone
    folder.mkdir(parents=True)
    (folder / "name").write_text(name + "\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
    (folder / "enabled").write_text("1\n")
    (folder / "constraint_0_name").write_text("long_term\n")
    (folder / "constraint_0_power_limit_uw").write_text("15000000\n")
    return folder


def set_energy(root: Path, zone: str, energy_uj: int) -> None:
    (root / zone / "energy_uj").write_text(f"{energy_uj}\n")


def two_socket_machine(root: Path) -> Path:
    """A two-socket Intel server's powercap folder: packages with core, uncore and dram
    subzones, psys, and the MMIO interface to package 0 again. Returns ``root``."""
    (root / "intel-rapl").mkdir(parents=True)  # the control type: no zone of its own
    (root / "intel-rapl" / "enabled").write_text("1\n")
    write_zone(root, "intel-rapl:0", "package-0", 1_000_000)
    write_zone(root, "intel-rapl:0:0", "core", 500_000)
    write_zone(root, "intel-rapl:0:1", "uncore", 100_000)
    write_zone(root, "intel-rapl:0:2", "dram", 2_000_000, DRAM_RANGE_UJ)
    write_zone(root, "intel-rapl:1", "package-1", 3_000_000)
    write_zone(root, "intel-rapl:1:0", "dram", 4_000_000, DRAM_RANGE_UJ)
    write_zone(root, "intel-rapl:2", "psys", 9_000_000)
    write_zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)
    return root
