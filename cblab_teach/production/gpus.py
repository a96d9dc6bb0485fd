"""GPU spec-sheet numbers: memory, bandwidth, dense tensor throughput (no 2:4 sparsity).

Vendors print the sparse figure first; every number here is the dense one (half the sparse one).
Memory in decimal GB (1e9 bytes) as printed; the usable amount is a little lower. Bandwidth in GB/s.
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
    memory_gb: float
    bandwidth_gbs: float
    bf16_tflops: float  # dense tensor-core BF16 (FP32 accumulate)
    fp8_tflops: float | None  # dense tensor-core FP8; None where the chip has no FP8
    int8_tops: float  # dense tensor-core INT8
    source: str  # the vendor's sheet
    checked_via: str
    note: str = ""
    fp32_tflops: float | None = None  # dense FP32 matmul rate; None where not recorded (set for a measured CPU)

    def __post_init__(self) -> None:
        """Refuse, naming the field, a figure the roofline would divide by zero on or turn into nonsense."""
        for name in ("memory_gb", "bandwidth_gbs", "bf16_tflops", "fp8_tflops", "int8_tops", "fp32_tflops"):
            value = getattr(self, name)
            if name in ("fp8_tflops", "fp32_tflops") and value is None:  # no FP8 tensor cores; FP32 not recorded
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value <= 0:
                accepted = {
                    "fp8_tflops": "None (no FP8) or a finite number > 0",
                    "fp32_tflops": "None (not recorded) or a finite number > 0",
                }.get(name, "a finite number > 0")
                raise ConfigError(f"GPUSpec {self.name!r}: {name} must be {accepted}, got {value!r}")

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.bandwidth_gbs * 1e9


GPUS: dict[str, GPUSpec] = {
    "A100-80GB": GPUSpec(
        "A100-80GB", memory_gb=80, bandwidth_gbs=2039, bf16_tflops=312, fp8_tflops=None, int8_tops=624,
        source="https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
        checked_via="https://glennklockwood.com/garden/processors/A100 (table from that datasheet)",
        note="SXM4 80GB (HBM2e); the PCIe card has 1935 GB/s. Ampere has no FP8 tensor cores: 8-bit means INT8.",
    ),
    "H100-SXM": GPUSpec(
        "H100-SXM", memory_gb=80, bandwidth_gbs=3350, bf16_tflops=989, fp8_tflops=1979, int8_tops=1979,
        source="https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
        checked_via="https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html (sheet: 1,979 BF16 / 3,958 FP8 "
        "'shown with sparsity, 1/2 lower without'); https://glennklockwood.com/garden/processors/h100",
    ),
    "H200": GPUSpec(
        "H200", memory_gb=141, bandwidth_gbs=4800, bf16_tflops=989, fp8_tflops=1979, int8_tops=1979,
        source="https://www.nvidia.com/en-us/data-center/h200/",
        checked_via="https://lzwjava.github.io/nvidia-h200-gpu-specs-en (3,958 FP8 with sparsity, same as H100 SXM)",
        note="H200 SXM: the same Hopper die as H100 with 141 GB HBM3e; compute figures equal H100 SXM's.",
    ),
    "L4": GPUSpec(
        "L4", memory_gb=24, bandwidth_gbs=300, bf16_tflops=121, fp8_tflops=242, int8_tops=242,
        source="https://www.nvidia.com/en-us/data-center/l4/",
        checked_via="https://grokipedia.com/page/NVIDIA_L4_vs_L40S (242 BF16/FP16 and 485 FP8/INT8 with sparsity); "
        "https://www.yobitel.com/knowledge-base/nvidia-l4",
        note="The sheet prints sparse values (485 FP8); dense is half, about 242.5, rounded down here.",
    ),
    "RTX-4090": GPUSpec(
        "RTX-4090", memory_gb=24, bandwidth_gbs=1008, bf16_tflops=165.2, fp8_tflops=330.3, int8_tops=660.6,
        source="https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf",
        checked_via="https://waredb.com/processor/nvidia-geforce-rtx-4090; https://gfxspeak.com/featured/nvidias-latest-lovelace/ (1,008 GB/s)",
        note="GeForce tensor rates depend on the accumulator: BF16 and FP8 here are with FP32 accumulate; "
        "FP8 with FP16 accumulate is 660.6. The whitepaper table itself was not readable here: unconfirmed.",
    ),
}
