"""GPU spec-sheet numbers: memory, bandwidth, dense tensor throughput (no 2:4 sparsity).

Vendors print the sparse figure first; every number here is the dense one (half the sparse one).

Memory is binary. The "80 GB" of an H100 or A100 names 80 GiB (80 x 2**30 bytes, about 85.9e9), not 80e9 bytes:
nvidia-smi reports 81,920 MiB in total on an A100 80GB and 81,559 MiB (about 85.5e9 bytes, 79.6 GiB) on an H100
80GB, a little under 80 GiB; the L4's "24 GB" shows as 23,034 MiB
(https://github.com/modal-labs/modal-client/pull/2797 lists these totals). So ``memory_gib`` holds the number in
the product name as GiB, ``memory_bytes`` is that many times 2**30, and ``smi_total_mib`` records what nvidia-smi
shows where that was verified; what an engine can allocate is lower still.
Bandwidth is decimal, GB/s of 1e9 bytes, as the sheets print it.
``checked_via`` names the page where each number was read (a reproduction of the vendor's sheet);
``note`` says what could not be confirmed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_gib: float  # the capacity in the product name, which is binary: "80 GB" = 80 GiB
    bandwidth_gbs: float
    bf16_tflops: float  # dense tensor-core BF16 (FP32 accumulate)
    fp8_tflops: float | None  # dense tensor-core FP8; None where the chip has no FP8
    int8_tops: float  # dense tensor-core INT8
    source: str  # the vendor's sheet
    checked_via: str
    note: str = ""
    fp32_tflops: float | None = None  # dense FP32 matmul rate; None where not recorded (set for a measured CPU)
    smi_total_mib: int | None = None  # total memory nvidia-smi reports, where verified; None where not recorded

    def __post_init__(self) -> None:
        """Refuse, naming the field, a figure the roofline would divide by zero on or turn into nonsense."""
        optional = ("fp8_tflops", "fp32_tflops", "smi_total_mib")
        for name in ("memory_gib", "bandwidth_gbs", "bf16_tflops", "int8_tops", *optional):
            value = getattr(self, name)
            if name in optional and value is None:  # no FP8 tensor cores; FP32 or the nvidia-smi total not recorded
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                accepted = {
                    "fp8_tflops": "None (no FP8) or a finite number > 0",
                    "fp32_tflops": "None (not recorded) or a finite number > 0",
                    "smi_total_mib": "None (not recorded) or a finite number > 0",
                }.get(name, "a finite number > 0")
                raise ConfigError(f"GPUSpec {self.name!r}: {name} must be {accepted}, got {value!r}")

    @property
    def memory_bytes(self) -> float:
        """The nominal capacity in bytes: ``memory_gib`` x 2**30 (80 GiB = 85,899,345,920 bytes)."""
        return self.memory_gib * 2**30

    @property
    def memory_gb(self) -> float:
        """The same capacity in decimal GB (1e9 bytes): 85.9 for an "80 GB" card, not 80."""
        return self.memory_bytes / 1e9

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.bandwidth_gbs * 1e9


GPUS: dict[str, GPUSpec] = {
    "A100-80GB": GPUSpec(
        "A100-80GB",
        memory_gib=80,
        smi_total_mib=81920,
        bandwidth_gbs=2039,
        bf16_tflops=312,
        fp8_tflops=None,
        int8_tops=624,
        source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
        checked_via="https://glennklockwood.com/garden/processors/A100 (table from that datasheet)",
        note="SXM4 80GB (HBM2e); the PCIe card has 1935 GB/s. Ampere has no FP8 tensor cores: 8-bit means INT8.",
    ),
    "H100-SXM": GPUSpec(
        "H100-SXM",
        memory_gib=80,
        smi_total_mib=81559,
        bandwidth_gbs=3350,
        bf16_tflops=989,
        fp8_tflops=1979,
        int8_tops=1979,
        source="https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
        checked_via="https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html (sheet: 1,979 BF16 / 3,958 FP8 "
        "'shown with sparsity, 1/2 lower without'); https://glennklockwood.com/garden/processors/h100",
    ),
    "H200": GPUSpec(
        "H200",
        memory_gib=141,
        bandwidth_gbs=4800,
        bf16_tflops=989,
        fp8_tflops=1979,
        int8_tops=1979,
        source="https://www.nvidia.com/en-us/data-center/h200/",
        checked_via="https://lzwjava.github.io/nvidia-h200-gpu-specs-en (3,958 FP8 with sparsity, same as H100 SXM)",
        note="H200 SXM: the same Hopper die as H100 with 141 GB of HBM3e, read as GiB like the other cards (its "
        "nvidia-smi total was not verified here); compute figures equal H100 SXM's.",
    ),
    "L4": GPUSpec(
        "L4",
        memory_gib=24,
        smi_total_mib=23034,
        bandwidth_gbs=300,
        bf16_tflops=121,
        fp8_tflops=242,
        int8_tops=242,
        source="https://www.nvidia.com/en-us/data-center/l4/",
        checked_via="https://grokipedia.com/page/NVIDIA_L4_vs_L40S (242 BF16/FP16 and 485 FP8/INT8 with sparsity); "
        "https://www.yobitel.com/knowledge-base/nvidia-l4",
        note="The sheet prints sparse values (485 FP8); dense is half, about 242.5, rounded down here.",
    ),
    "RTX-4090": GPUSpec(
        "RTX-4090",
        memory_gib=24,
        bandwidth_gbs=1008,
        bf16_tflops=165.2,
        fp8_tflops=330.3,
        int8_tops=660.6,
        source="https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",
        checked_via="https://waredb.com/processor/nvidia-geforce-rtx-4090; https://gfxspeak.com/featured/nvidias-latest-lovelace/ (1,008 GB/s)",
        note="GeForce tensor rates depend on the accumulator: BF16 and FP8 here are with FP32 accumulate; "
        "FP8 with FP16 accumulate is 660.6. The whitepaper table itself was not readable here: unconfirmed.",
    ),
}
