# Type stub of the extension module built from python/src/lib.rs (PyO3); the
# docstrings of those functions say what each does.
from typing import Optional, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

class _Result(TypedDict):
    loss: float
    lse: npt.NDArray[np.float32]
    row_loss: npt.NDArray[np.float32]
    top1: npt.NDArray[np.bool_]
    d_u: Optional[npt.NDArray[np.float32]]
    d_v: Optional[npt.NDArray[np.float32]]
    d_temperature: Optional[float]

def mns_loss(
    u: Union[npt.NDArray[np.float32], npt.NDArray[np.uint16]],  # uint16: bf16 bit patterns
    v: Union[npt.NDArray[np.float32], npt.NDArray[np.uint16]],
    log_q: npt.NDArray[np.float32],
    *,
    temperature: float,
    ids: Optional[npt.NDArray[np.int64]] = None,
    row_weight: Optional[npt.NDArray[np.float32]] = None,
    correct_positive: bool = True,
    positive_offset: int = 0,
    threads: int = 0,
    grad: bool = True,
    precision: str = "f32",
) -> _Result: ...
def mns_loss_cuda(
    device: int,
    stream: int,
    u: int,
    v: int,
    log_q: int,
    ids: int,
    row_weight: int,
    b: int,
    n: int,
    k: int,
    *,
    temperature: float,
    correct_positive: bool,
    positive_offset: int,
    precision: str,
    loss: int,
    lse: int,
    row_loss: int,
    top1: int,
    d_u: int,
    d_v: int,
    d_temperature: int,
) -> None: ...
def check_shapes(
    b: int,
    k: int,
    n: int,
    kv: int,
    positive_offset: int,
    log_q_len: int,
    ids_len: Optional[int],
    row_weight_len: Optional[int],
) -> None: ...
def check_values(
    b: int,
    n: int,
    temperature: float,
    nonfinite: Optional[tuple[str, int, float]],
    negative: Optional[tuple[int, float]],
    max_u_norm: float,
    max_v_norm: float,
    max_abs_log_q: float,
    max_weight: float,
) -> None: ...
def cuda_unavailable() -> Optional[str]: ...
def cuda_scratch_bytes(device: int, b: int, n: int, k: int, precision: str) -> int: ...
def backend_info() -> tuple[str, int]: ...
def cpu_supports(precision: str) -> bool: ...
