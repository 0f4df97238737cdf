"""The learned router's model file (`.sblr`), version 1, and its pure-Python scorer.

Layout, all numbers little-endian (the Rust reader is learned/src/model.rs):

    offset  size           field
    0       4              magic b"SBLR"
    4       2   u16        format version = 1
    6       1   u8         table_bits B (10..=20): the hashed table has 2^B weights
    7       1   u8         dense feature count (15 in version 1)
    8       1   u8         hashed group count (3 in version 1)
    9       1   u8         bucket count K (6 in version 1)
    10      2   u16        quantile count Q (>= 2)
    12      4   f32        bias
    16      4*15 f32       dense weights (standardisation folded in)
    ..      4*Q  f32       calibration quantiles, all prompts: entry i is the score
                           threshold that sends a share i/(Q-1) of the calibration
                           prompts to strong (non-increasing in i)
    ..      4*K*Q f32      the same per feedback bucket (the global ones where a
                           bucket had too few calibration prompts)
    ..      4*K  u32       calibration prompts per bucket
    ..      4   f32        table scale
    ..      2^B  i8        hashed weights in units of the scale (one table shared
                           by the three groups)
    end-4   4   u32        FNV-1a 32 of every byte before it

Score: z = bias + sum_j dense_w[j] * dense[j]
           + sum over groups g of (scale * (integer sum of table[hash & (2^B - 1)] over
             g's items)) / sqrt(items in g)
(accumulated in that order in f64), s = 1 / (1 + exp(-clamp(z, -40, 40))).
"""

import math
import struct

import features

MAGIC = b"SBLR"
VERSION = 1
N_BUCKETS = len(features.BUCKET_NAMES)


def write(path, table_bits, bias, dense_w, scale, table, quantiles, bucket_quantiles, bucket_counts):
    assert len(dense_w) == features.N_DENSE and len(table) == 1 << table_bits
    q = len(quantiles)
    assert len(bucket_quantiles) == N_BUCKETS and all(len(b) == q for b in bucket_quantiles)
    out = bytearray()
    out += MAGIC
    out += struct.pack("<HBBBBHf", VERSION, table_bits, features.N_DENSE, len(features.GROUPS), N_BUCKETS, q, bias)
    out += struct.pack(f"<{features.N_DENSE}f", *dense_w)
    out += struct.pack(f"<{q}f", *quantiles)
    for b in bucket_quantiles:
        out += struct.pack(f"<{q}f", *b)
    out += struct.pack(f"<{N_BUCKETS}I", *bucket_counts)
    out += struct.pack("<f", scale)
    out += struct.pack(f"<{len(table)}b", *table)
    out += struct.pack("<I", features.fnv(bytes(out)))
    with open(path, "wb") as fh:
        fh.write(out)
    return len(out)


class Model:
    def __init__(self, blob):
        if len(blob) < 20 or blob[:4] != MAGIC:
            raise ValueError("not a switchboard learned-router model (magic)")
        (stored,) = struct.unpack_from("<I", blob, len(blob) - 4)
        if features.fnv(blob[:-4]) != stored:
            raise ValueError("checksum mismatch")
        version, bits, nd, ng, nb, q, bias = struct.unpack_from("<HBBBBHf", blob, 4)
        if version != VERSION or nd != features.N_DENSE or ng != 3 or nb != N_BUCKETS:
            raise ValueError("unsupported model layout")
        off = 16
        self.table_bits, self.bias = bits, bias

        def take(fmt, n):
            nonlocal off
            vals = list(struct.unpack_from(f"<{n}{fmt}", blob, off))
            off += 4 * n
            return vals

        self.dense_w = take("f", nd)
        self.quantiles = take("f", q)
        self.bucket_quantiles = [take("f", q) for _ in range(nb)]
        self.bucket_counts = take("I", nb)
        (self.scale,) = take("f", 1)
        self.table = list(struct.unpack_from(f"<{1 << bits}b", blob, off))
        off += 1 << bits
        if off != len(blob) - 4:
            raise ValueError("length mismatch")

    @classmethod
    def load(cls, path):
        with open(path, "rb") as fh:
            return cls(fh.read())

    def logit(self, text):
        dense, groups, _ = features.extract(text)
        return self.logit_of(dense, groups)

    def logit_of(self, dense, groups):
        mask = (1 << self.table_bits) - 1
        z = float(self.bias)
        for w, x in zip(self.dense_w, dense):
            z += w * x
        t = self.table
        for hashes in groups:
            if hashes:
                acc = 0
                for h in hashes:
                    acc += t[h & mask]
                z += (self.scale * acc) / math.sqrt(len(hashes))
        return z

    def score(self, text):
        return sigmoid(self.logit(text))


def sigmoid(z):
    z = min(40.0, max(-40.0, z))  # the same clamp as the Rust scorer (and no overflow)
    return 1.0 / (1.0 + math.exp(-z))
