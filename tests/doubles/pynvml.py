"""Stand-in for nvidia-ml-py's ``pynvml`` (a double of the third-party library, for tests on
machines without an NVIDIA GPU): the functions drawpipe calls, with the real module's
names, return types and errors (pynvml.py of nvidia-ml-py 13.615).

    nvmlInit() / nvmlShutdown()                      reference-counted, like the library
    nvmlDeviceGetCount() -> int
    nvmlDeviceGetHandleByIndex(i) / nvmlDeviceGetHandleByUUID("GPU-...") -> handle
    nvmlDeviceGetName(handle) -> str                 str, as its convertStrBytes gives
    nvmlDeviceGetUUID(handle) -> str
    nvmlDeviceGetTotalEnergyConsumption(handle) -> int, mJ since the driver loaded
    NVMLError(value)                                 maps to its subclass, e.g.
                                                     NVMLError_NotSupported; str() is the
                                                     library's text ("Not Supported")

The test plays the machine through ``machine``: its GPUs (name, UUID, energy counter,
whether the counter is supported), whether the shared library is found, and a failure
for the next energy read.
"""

import threading

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15

_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    _valClassMapping: dict = {}

    def __new__(typ, value):
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self):
        return _TEXT.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == other.value

    __hash__ = Exception.__hash__


def _error_class(name: str, value: int):
    def new(typ, *args):
        return NVMLError.__new__(typ, value)

    cls = type(name, (NVMLError,), {"__new__": new})
    NVMLError._valClassMapping[value] = cls
    return cls


NVMLError_Uninitialized = _error_class("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _error_class("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _error_class("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NotFound = _error_class("NVMLError_NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _error_class("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _error_class("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_GpuIsLost = _error_class("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)


class Gpu:
    def __init__(self, name: str, uuid: str, energy_mj: int = 0, supported: bool = True):
        self.name = name
        self.uuid = uuid
        self.energy_mj = energy_mj
        self.supported = supported


class Machine:
    def __init__(self):
        self.gpus: list[Gpu] = []
        self.library_found = True
        self.fail_next: NVMLError | None = None
        self.initialized = 0  # nvmlInit calls not yet shut down


machine = Machine()
_lock = threading.Lock()


class c_nvmlDevice_t:
    """The handle type (a ctypes pointer in the library)."""

    def __init__(self, gpu: Gpu):
        self.gpu = gpu


def _check_initialized():
    if machine.initialized <= 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def nvmlInit():
    if not machine.library_found:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    with _lock:
        machine.initialized += 1


def nvmlShutdown():
    _check_initialized()
    with _lock:
        machine.initialized -= 1


def nvmlDeviceGetCount():
    _check_initialized()
    return len(machine.gpus)


def nvmlDeviceGetHandleByIndex(index):
    _check_initialized()
    if not 0 <= index < len(machine.gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return c_nvmlDevice_t(machine.gpus[index])


def nvmlDeviceGetHandleByUUID(uuid):
    _check_initialized()
    for gpu in machine.gpus:
        if gpu.uuid == uuid:
            return c_nvmlDevice_t(gpu)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetName(handle):
    _check_initialized()
    return handle.gpu.name


def nvmlDeviceGetUUID(handle):
    _check_initialized()
    return handle.gpu.uuid


def nvmlDeviceGetTotalEnergyConsumption(handle):
    _check_initialized()
    if not handle.gpu.supported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    failure, machine.fail_next = machine.fail_next, None
    if failure is not None:
        raise failure
    return handle.gpu.energy_mj
