"""GPU telemetry per timing sample through NVML (`nvidia-ml-py`): SM clock, temperature, power and
the reasons the clocks are held down. A sample taken while the GPU slowed itself for heat or a
hardware signal is flagged and left out of the estimate; the report counts them.

NVML numbers GPUs its own way (CUDA_VISIBLE_DEVICES does not apply), so the device is found by the
PCI bus id torch reports for the GPU the process uses.
"""

from __future__ import annotations

__all__ = ["HARD_THROTTLE", "Telemetry"]

# nvmlClocksThrottleReason* bits. Hard: the chip slowed itself (heat, a hardware slowdown signal,
# the power brake); such samples are excluded. The software power cap is how a busy H100 runs
# all the time (boost within the power limit): counted, not excluded, since both kernels of a
# pair see it.
_SW_POWER_CAP, _HW_SLOWDOWN, _SW_THERMAL, _HW_THERMAL, _HW_POWER_BRAKE = 0x4, 0x8, 0x20, 0x40, 0x80
HARD_THROTTLE = _HW_SLOWDOWN | _SW_THERMAL | _HW_THERMAL | _HW_POWER_BRAKE


class Telemetry:
    """`read()` -> {"sm_mhz", "temp_c", "power_w", "reasons"} or None when NVML is unavailable
    (`why` says why)."""

    def __init__(self, device_index: int = 0):
        self.why = ""
        self._nvml = self._handle = None
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            props = torch.cuda.get_device_properties(device_index)
            bus = f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            self._handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode())
            self._nvml = pynvml
            self.read()
        except Exception as exc:  # no NVML, no driver, an old torch without PCI ids: timing still works
            self.why = f"NVML telemetry unavailable ({type(exc).__name__}: {str(exc)[:120]})"
            self._nvml = None

    @property
    def ok(self) -> bool:
        return self._nvml is not None

    def read(self) -> dict | None:
        if self._nvml is None:
            return None
        nv, h = self._nvml, self._handle
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nv.nvmlDeviceGetCurrentClocksThrottleReasons
        return {"sm_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                "temp_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                "power_w": nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "reasons": int(reasons_fn(h))}

    @staticmethod
    def throttled(reading: dict | None) -> bool:
        return bool(reading and reading["reasons"] & HARD_THROTTLE)

    @staticmethod
    def power_capped(reading: dict | None) -> bool:
        return bool(reading and reading["reasons"] & _SW_POWER_CAP)
