#!/usr/bin/env python3
"""Prints the ERFCX coefficients of src/backend/smooth.rs: erfcx(z) = e^(z^2) erfc(z) for
0 <= z <= 10.3 as a polynomial, highest degree first, in y = (t - mid) / half with
t = 1 / (1 + 0.3 z) (y spans [-1, 1]), by Chebyshev interpolation at 50 digits, and its worst
relative error in f64 Horner evaluation.

    python3 scripts/fit_erfcx.py        # needs mpmath (pip install mpmath)
"""
import mpmath as mp

mp.mp.dps = 50
DEGREE = 20
Z_HIGH, SCALE = mp.mpf("10.3"), mp.mpf("0.3")
T_LOW, T_HIGH = 1 / (1 + SCALE * Z_HIGH), mp.mpf(1)
MID, HALF = (T_LOW + T_HIGH) / 2, (T_HIGH - T_LOW) / 2


def erfcx_at(y):
    z = (1 / (y * HALF + MID) - 1) / SCALE
    return mp.exp(z * z) * mp.erfc(z)


coefficients, _ = mp.chebyfit(erfcx_at, [-1, 1], DEGREE + 1, error=True)
as_f64 = [float(c) for c in coefficients]
worst = 0.0
for i in range(4001):
    y = -1 + i / 2000
    value = 0.0
    for c in as_f64:
        value = value * y + c
    exact = erfcx_at(mp.mpf(y))
    worst = max(worst, abs((value - float(exact)) / float(exact)))
print("// y = t * %r + %r" % (float(1 / HALF), float(-MID / HALF)))
print("const ERFCX: [f64; %d] = [" % len(as_f64))
for c in as_f64:
    print("    %r," % c)
print("];")
print("// worst relative error in f64: %.2e" % worst)
