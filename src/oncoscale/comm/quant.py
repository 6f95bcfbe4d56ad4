"""Value codecs for the wire: native dtype, fp16/bf16 casts and QSGD stochastic quantisation.

A codec turns a 1-D float tensor into bytes and back. Sizes are deterministic given the
number of values, so a message header only carries counts.

QSGD (Alistarh et al., 2017) with ``bits`` b in {2, 4, 8}: values are split into buckets of
``bucket_size``; each bucket keeps its max-abs ``scale`` (float32) and every value becomes
``sign * level`` with ``level`` in ``0..s`` (``s = 2**(b-1) - 1``), rounded stochastically
so that ``E[decode(encode(x))] = x`` (unbiased). Codes are packed ``8 // b`` per byte.
"""

from __future__ import annotations

import zlib

import torch

from oncoscale.errors import ConfigurationError


def view_as(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret a uint8 tensor as ``dtype`` (copying first when the slice is misaligned)."""
    buf = buf.contiguous()
    try:
        return buf.view(dtype)
    except RuntimeError:
        return buf.clone().view(dtype)


class ValueCodec:
    """Identity codec: values travel in their own dtype (or ``dtype`` if given)."""

    name = "native"
    lossy = False

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype

    def value_bytes(self, dtype: torch.dtype) -> float:
        """Wire bytes per value (amortised)."""
        return torch.empty((), dtype=self.dtype or dtype).element_size()

    def nbytes(self, n: int, dtype: torch.dtype) -> int:
        """Exact wire bytes of ``n`` values."""
        return n * torch.empty((), dtype=self.dtype or dtype).element_size()

    def encode(self, values: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Values -> uint8 tensor of ``nbytes(len(values))`` bytes (``seed``: for the
        random rounding of stochastic codecs; equal seeds give equal codes)."""
        v = values if self.dtype is None else values.to(self.dtype)
        return v.contiguous().view(torch.uint8)

    def decode(self, buf: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        """uint8 tensor -> ``n`` values of ``dtype``."""
        wire = self.dtype or dtype
        if n == 0:
            return torch.zeros(0, dtype=dtype, device=buf.device)
        return view_as(buf, wire).to(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dtype})" if self.dtype else "ValueCodec()"


class CastCodec(ValueCodec):
    """Values sent as float16 or bfloat16 (decoded back to the accumulation dtype)."""

    lossy = True

    def __init__(self, dtype: torch.dtype) -> None:
        if dtype not in (torch.float16, torch.bfloat16):
            raise ConfigurationError(f"CastCodec dtype must be float16 or bfloat16, found {dtype}")
        super().__init__(dtype)
        self.name = "fp16" if dtype == torch.float16 else "bf16"


class QSGDCodec(ValueCodec):
    """Unbiased stochastic quantisation to ``bits`` in buckets with a float32 scale each."""

    lossy = True

    def __init__(self, bits: int = 8, bucket_size: int = 512, seed: int | None = None) -> None:
        if bits not in (2, 4, 8):
            raise ConfigurationError(f"QSGD bits must be 2, 4 or 8, found {bits}")
        if bucket_size < 1:
            raise ConfigurationError(f"QSGD bucket_size must be >= 1, found {bucket_size}")
        super().__init__(None)
        self.bits = bits
        self.bucket_size = int(bucket_size)
        self.levels = 2 ** (bits - 1) - 1
        self.per_byte = 8 // bits
        self.name = f"qsgd{bits}"
        self._gen: torch.Generator | None = None
        self._seed = seed

    def __repr__(self) -> str:
        return f"QSGDCodec(bits={self.bits}, bucket_size={self.bucket_size})"

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self._seed is None:
            return None
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(self._seed)
        return self._gen

    def value_bytes(self, dtype: torch.dtype) -> float:
        return self.bits / 8 + 4 / self.bucket_size

    def _layout(self, n: int) -> tuple[int, int]:
        buckets = -(-n // self.bucket_size)
        code_bytes = -(-n // self.per_byte)
        return buckets, code_bytes

    def nbytes(self, n: int, dtype: torch.dtype) -> int:
        buckets, code_bytes = self._layout(n)
        return 4 * buckets + code_bytes

    def encode(self, values: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        n = values.numel()
        if n == 0:
            return torch.zeros(0, dtype=torch.uint8, device=values.device)
        buckets, code_bytes = self._layout(n)
        v = values.to(torch.float32)
        pad = buckets * self.bucket_size - n
        vb = torch.nn.functional.pad(v, (0, pad)).view(buckets, self.bucket_size)
        scale = vb.abs().amax(dim=1)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        x = vb.abs() / safe[:, None] * self.levels
        low = x.floor()
        if seed is not None:
            gen = torch.Generator(device=v.device)
            gen.manual_seed(int(seed) % (2**63))
        else:
            gen = self._generator(v.device)
        rnd = torch.rand(x.shape, generator=gen, device=v.device)
        level = low + (rnd < (x - low)).to(x.dtype)
        code = (torch.sign(vb) * level + self.levels).to(torch.uint8).reshape(-1)[:n]
        packed = self._pack(code)
        return torch.cat([scale.contiguous().view(torch.uint8), packed[:code_bytes]])

    def decode(self, buf: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        if n == 0:
            return torch.zeros(0, dtype=dtype, device=buf.device)
        buckets, code_bytes = self._layout(n)
        scale = view_as(buf[: 4 * buckets], torch.float32)
        code = self._unpack(buf[4 * buckets: 4 * buckets + code_bytes], n)
        level = code.to(torch.float32) - self.levels
        per = torch.repeat_interleave(scale, self.bucket_size)[:n]
        return (level / self.levels * per).to(dtype)

    def _pack(self, code: torch.Tensor) -> torch.Tensor:
        if self.per_byte == 1:
            return code
        k = self.per_byte
        pad = (-code.numel()) % k
        c = torch.nn.functional.pad(code, (0, pad)).view(-1, k).to(torch.int32)
        shifts = torch.arange(k, device=code.device, dtype=torch.int32) * self.bits
        return (c << shifts).sum(dim=1).to(torch.uint8)

    def _unpack(self, packed: torch.Tensor, n: int) -> torch.Tensor:
        if self.per_byte == 1:
            return packed[:n]
        k = self.per_byte
        shifts = torch.arange(k, device=packed.device, dtype=torch.int32) * self.bits
        mask = (1 << self.bits) - 1
        return ((packed.to(torch.int32)[:, None] >> shifts) & mask).reshape(-1)[:n]


def get_codec(codec: str | ValueCodec | None) -> ValueCodec:
    """``None``/``"native"``, ``"fp16"``, ``"bf16"``, ``"qsgd8"``/``"qsgd4"``/``"qsgd2"``,
    or a :class:`ValueCodec` instance."""
    if codec is None or codec == "native":
        return ValueCodec()
    if isinstance(codec, ValueCodec):
        return codec
    if codec in ("fp16", "float16"):
        return CastCodec(torch.float16)
    if codec in ("bf16", "bfloat16"):
        return CastCodec(torch.bfloat16)
    if isinstance(codec, str) and codec.startswith("qsgd") and codec[4:].isdigit():
        return QSGDCodec(int(codec[4:]))
    raise ConfigurationError(
        f"codec must be None, 'fp16', 'bf16', 'qsgd2', 'qsgd4', 'qsgd8' or a ValueCodec, "
        f"found {codec!r}")


def codec_id(codec: ValueCodec) -> int:
    """A small integer naming the codec and its settings (agreed across ranks in headers)."""
    return zlib.crc32(repr(codec).encode())
