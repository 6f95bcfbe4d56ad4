"""Value codecs for the wire: native dtype, fp16/bf16 casts and QSGD stochastic quantisation.

A codec turns a 1-D float tensor into bytes and back. Sizes are deterministic given the
number of values, so a message header only carries counts.

QSGD (Alistarh et al., 2017) with ``bits`` b in {2, 4, 8}: values are split into buckets of
``bucket_size``; each bucket keeps its max-abs ``scale`` (float32) and every value becomes
``sign * level`` with ``level`` in ``0..s`` (``s = 2**(b-1) - 1``), rounded stochastically
so that ``E[decode(encode(x))] = x`` (unbiased). Codes are packed ``8 // b`` per byte.
"""

from __future__ import annotations

import random
import threading
import zlib

import torch

from oncoscale.errors import ConfigurationError

_LOCAL = threading.local()


def _scratch(n: int, device: torch.device | str, slot: int = 0) -> torch.Tensor:
    """A reusable float32 work buffer of ``n`` entries for this thread (saves the page faults
    of fresh large allocations). Its content is overwritten by the next call on the slot."""
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None:
        bufs = _LOCAL.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.numel() < n or buf.device != torch.device(device):
        buf = torch.empty(max(n, 1 << 16), dtype=torch.float32, device=device)
        bufs[slot] = buf
    return buf[:n]


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
        return (self.dtype or dtype).itemsize

    def nbytes(self, n: int, dtype: torch.dtype) -> int:
        """Exact wire bytes of ``n`` values."""
        return n * (self.dtype or dtype).itemsize

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
    """Unbiased stochastic quantisation to ``bits`` in buckets with a float32 scale each.

    Wire format: ``buckets`` float32 scales (max-abs of each bucket of ``bucket_size``
    values), then one code per value packed ``8 // bits`` per byte. A value ``x`` in a
    bucket of scale ``m`` becomes the integer level ``floor(x * s / m + u)`` in
    ``[-s, s]`` (``s = 2**(bits-1) - 1``) with a dither ``u`` uniform on [0, 1), so
    ``E[decode(encode(x))] = x`` exactly and ``|decode - x| <= m / s``.

    The dither is cheap and vectorised: a fixed permutation table ``pi`` of ``L`` entries
    (``L`` a multiple of ``bucket_size``, about 4096), and per call a random offset ``o`` and
    a random ``c`` in [0, 1): value ``i`` uses ``u_i = (pi[(i + o) mod L] + c) / L``, which
    is exactly uniform on [0, 1) for every ``i`` (unbiased rounding), stratified within a
    run of ``L`` values; values ``L`` apart share their dither within one call.
    """

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
        self._seed = seed
        self._rng = random.Random(seed)  # per-call offsets when no seed is given
        self.period = self.bucket_size * max(1, 4096 // self.bucket_size)
        gen = torch.Generator().manual_seed(0x5eed)
        self._table = torch.randperm(self.period, generator=gen).to(torch.float32) \
            / self.period

    def __repr__(self) -> str:
        return f"QSGDCodec(bits={self.bits}, bucket_size={self.bucket_size})"

    def value_bytes(self, dtype: torch.dtype) -> float:
        return self.bits / 8 + 4 / self.bucket_size

    def _layout(self, n: int) -> tuple[int, int]:
        buckets = -(-n // self.bucket_size)
        code_bytes = -(-n // self.per_byte)
        return buckets, code_bytes

    def nbytes(self, n: int, dtype: torch.dtype) -> int:
        buckets, code_bytes = self._layout(n)
        return 4 * buckets + code_bytes

    def _dither(self, seed: int | None, device: torch.device) -> torch.Tensor:
        """One period of dither plus the level offset ``s``: shape (period,)."""
        rng = random.Random(int(seed)) if seed is not None else self._rng
        off = rng.randrange(self.period)
        c = rng.random()
        t = self._table if self._table.device == device else self._table.to(device)
        self._table = t
        return torch.roll(t, -off) + (c / self.period + self.levels)

    def _codes(self, v: torch.Tensor, dither: torch.Tensor, out: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales (buckets,) and uint8 codes in ``0..2s`` of ``v`` (written to ``out`` when
        given); ``v.numel()`` is a multiple of ``bucket_size``."""
        b = self.bucket_size
        vb = v.view(-1, b)
        scale = torch.maximum(vb.amax(dim=1), vb.amin(dim=1).neg_())  # (aminmax is slower)
        factor = torch.where(scale > 0, self.levels / scale, torch.zeros_like(scale))
        per = dither.numel()
        if v.numel() % per == 0:  # x = dither + v * factor in one pass (broadcast views)
            kb = per // b
            x = torch.addcmul(dither.view(1, kb, b), v.view(-1, kb, b), factor.view(-1, kb, 1),
                              out=_scratch(v.numel(), v.device).view(-1, kb, b))
        else:
            x = v.view(-1, b) * factor[:, None]
            x.view(-1).add_(dither.repeat(-(-x.numel() // per))[: x.numel()])
        # x lies in [0, 2s + 1): truncation towards zero is the floor
        if out is None:
            return scale, x.view(-1).to(torch.uint8)
        out.copy_(x.view(-1))
        return scale, out

    def encode(self, values: torch.Tensor, seed: int | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`ValueCodec.encode`; ``out``: a uint8 tensor of ``nbytes(n)`` bytes to
        write the message into (e.g. a slice of a larger message)."""
        n = values.numel()
        if n == 0:
            return torch.zeros(0, dtype=torch.uint8, device=values.device)
        buckets, code_bytes = self._layout(n)
        v = values.reshape(-1).to(torch.float32)
        b = self.bucket_size
        dither = self._dither(seed, v.device)
        full = (n // self.period) * self.period  # whole periods: no copy, no padding
        if out is None:
            out = torch.empty(4 * buckets + code_bytes, dtype=torch.uint8, device=v.device)
        scale_buf = out[: 4 * buckets]
        aligned = scale_buf.data_ptr() % 4 == 0
        scales = scale_buf.view(torch.float32) if aligned else \
            torch.empty(buckets, dtype=torch.float32, device=v.device)
        body = out[4 * buckets:]
        codes = []
        if full:
            direct = body[:full] if self.per_byte == 1 else None
            sc, cd = self._codes(v[:full], dither, direct)
            scales[: full // b].copy_(sc)
            codes.append(cd)
        if full < n:
            rest = v[full:]
            pad = (-rest.numel()) % b
            if pad:
                rest = torch.nn.functional.pad(rest, (0, pad))
            sc, cd = self._codes(rest, dither)
            scales[full // b:].copy_(sc)
            codes.append(cd[: n - full])
        if self.per_byte == 1:
            if full < n:
                body[full:].copy_(codes[-1])
        else:
            body.copy_(self._pack(torch.cat(codes) if len(codes) > 1 else codes[0]))
        if not aligned:
            scale_buf.copy_(scales.view(torch.uint8))
        return out

    def decode(self, buf: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
        if n == 0:
            return torch.zeros(0, dtype=dtype, device=buf.device)
        out = torch.empty(n, dtype=torch.float32, device=buf.device)
        self.decode_into(buf, out, accumulate=False)
        return out if dtype == torch.float32 else out.to(dtype)

    def decode_into(self, buf: torch.Tensor, out: torch.Tensor, *, accumulate: bool = True
                    ) -> torch.Tensor:
        """Decode ``out.numel()`` values from ``buf`` into the float32 tensor ``out``
        (``accumulate=True``: add them to it). Two passes over the values."""
        n = out.numel()
        if n == 0:
            return out
        buckets, code_bytes = self._layout(n)
        scale = view_as(buf[: 4 * buckets], torch.float32)
        step = scale / self.levels
        code = self._unpack(buf[4 * buckets: 4 * buckets + code_bytes], n)
        b = self.bucket_size
        full = (n // b) * b
        if full:  # value = (code - s) * step
            nb = full // b
            codef = _scratch(full, out.device).view(-1, b)
            codef.copy_(code[:full].view(-1, b))
            o = out[:full].view(-1, b)
            if accumulate:
                codef.sub_(self.levels)
                o.addcmul_(codef, step[:nb, None])
            else:
                torch.addcmul((-self.levels * step[:nb])[:, None], codef, step[:nb, None], out=o)
        if full < n:
            tail = (code[full:].to(torch.float32) - self.levels) * step[-1]
            if accumulate:
                out[full:] += tail
            else:
                out[full:] = tail
        return out

    def _pack(self, code: torch.Tensor) -> torch.Tensor:
        if self.per_byte == 1:
            return code
        k = self.per_byte
        pad = (-code.numel()) % k
        c = torch.nn.functional.pad(code, (0, pad)) if pad else code
        c = c.view(-1, k)
        out = c[:, 0].clone()
        for j in range(1, k):  # k <= 4 whole-array passes
            out |= c[:, j] << (j * self.bits)
        return out

    def _unpack(self, packed: torch.Tensor, n: int) -> torch.Tensor:
        if self.per_byte == 1:
            return packed[:n]
        k = self.per_byte
        mask = (1 << self.bits) - 1
        out = torch.empty(packed.numel(), k, dtype=torch.uint8, device=packed.device)
        for j in range(k):
            torch.bitwise_and(packed >> (j * self.bits), mask, out=out[:, j])
        return out.view(-1)[:n]


_NAMED: dict[str, ValueCodec] = {}


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
        # one instance per name: its dither table and random state are built once
        named = _NAMED.get(codec)
        if named is None:
            named = _NAMED[codec] = QSGDCodec(int(codec[4:]))
        return named
    raise ConfigurationError(
        f"codec must be None, 'fp16', 'bf16', 'qsgd2', 'qsgd4', 'qsgd8' or a ValueCodec, "
        f"found {codec!r}")


def codec_id(codec: ValueCodec) -> int:
    """A small integer naming the codec and its settings (agreed across ranks in headers)."""
    return zlib.crc32(repr(codec).encode())
