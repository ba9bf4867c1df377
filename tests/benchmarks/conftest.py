"""Machine info for pytest-benchmark: which GPU, driver, CUDA and torch produced the numbers."""

import torch

from bench.nvml import NvmlReader, NvmlUnavailable


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_version"] = torch.__version__
    machine_info["cuda_version"] = torch.version.cuda
    machine_info["gpu_name"] = None
    machine_info["driver_version"] = None
    if torch.cuda.is_available():
        machine_info["gpu_name"] = torch.cuda.get_device_name(0)
        try:
            with NvmlReader(0) as reader:
                machine_info["driver_version"] = reader.driver_version()
        except NvmlUnavailable as exc:
            machine_info["driver_version"] = f"unknown ({exc})"
