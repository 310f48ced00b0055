"""The NumPy reference: one layer, one direction, one time step at a time, written to be read.

It is the ground truth the kernels are tested against and the ``backend="numpy"`` fallback. The
formulas are those of ``csrc/include/fusedrnn/cell_math.h`` (PyTorch's gate orders and
conventions); the arguments are those of :func:`fusedrnn.ops.forward` after validation:

    x (T, B, I), h0 and c0 (B, H), w_ih (G*H, I), w_hh (G*H, H), b_ih and b_hh (G*H,) or None,
    lengths (B,) int64 in [1, T] or None.
"""

import numpy as np

GATES = {"lstm": 4, "gru": 3, "gru_reset_before": 3, "rnn_tanh": 1, "rnn_relu": 1}


def sigmoid(v):
    # Written through tanh so that large |v| neither overflows exp nor loses precision.
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def _step(cell, xt, h, c, w_ih, w_hh, b_ih, b_hh):
    """One step for all rows. Returns h', c' and what backward needs of this step."""
    H = h.shape[1]
    gx = xt @ w_ih.T + b_ih  # input side, (B, G*H)
    if cell == "lstm":
        pre = gx + h @ w_hh.T + b_hh
        i, f, g, o = (pre[:, k * H:(k + 1) * H] for k in range(4))
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return h_new, c_new, dict(i=i, f=f, g=g, o=o, c_new=c_new)
    if cell == "gru":
        gh = h @ w_hh.T + b_hh
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]
        n = np.tanh(gx[:, 2 * H:] + r * hn)
        return (1 - z) * n + z * h, None, dict(r=r, z=z, n=n, hn=hn)
    if cell == "gru_reset_before":
        gh = h @ w_hh[:2 * H].T + b_hh[:2 * H]
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:])
        rh = r * h
        n = np.tanh(gx[:, 2 * H:] + rh @ w_hh[2 * H:].T + b_hh[2 * H:])
        return (1 - z) * n + z * h, None, dict(r=r, z=z, n=n, rh=rh)
    pre = gx + h @ w_hh.T + b_hh
    h_new = np.tanh(pre) if cell == "rnn_tanh" else np.maximum(pre, 0)
    return h_new, None, dict(h_new=h_new)


def _step_backward(cell, rec, h, c, dh, dc, w_hh):
    """Gradients of one step: (dpre_x, dpre_h, dh_prev, dc_prev, recurrent input for dW_hh)."""
    H = h.shape[1]
    if cell == "lstm":
        i, f, g, o, c_new = rec["i"], rec["f"], rec["g"], rec["o"], rec["c_new"]
        tc = np.tanh(c_new)
        dc_total = dc + dh * o * (1 - tc ** 2)
        dpre = np.concatenate([dc_total * g * i * (1 - i), dc_total * c * f * (1 - f),
                               dc_total * i * (1 - g ** 2), dh * tc * o * (1 - o)], axis=1)
        return dpre, dpre, dpre @ w_hh, dc_total * f, None
    if cell == "gru":
        r, z, n, hn = rec["r"], rec["z"], rec["n"], rec["hn"]
        dn = dh * (1 - z) * (1 - n ** 2)
        dz = dh * (h - n) * z * (1 - z)
        dr = dn * hn * r * (1 - r)
        dpre_x = np.concatenate([dr, dz, dn], axis=1)
        dpre_h = np.concatenate([dr, dz, dn * r], axis=1)
        return dpre_x, dpre_h, dpre_h @ w_hh + dh * z, None, None
    if cell == "gru_reset_before":
        r, z, n = rec["r"], rec["z"], rec["n"]
        dn = dh * (1 - z) * (1 - n ** 2)
        dz = dh * (h - n) * z * (1 - z)
        drh = dn @ w_hh[2 * H:]
        dr = drh * h * r * (1 - r)
        dpre = np.concatenate([dr, dz, dn], axis=1)
        dh_prev = dh * z + drh * r + dpre[:, :2 * H] @ w_hh[:2 * H]
        # n's recurrent product reads r*h rather than h.
        return dpre, dpre, dh_prev, None, rec["rh"]
    h_new = rec["h_new"]
    dpre = dh * (1 - h_new ** 2) if cell == "rnn_tanh" else dh * (h_new > 0)
    return dpre, dpre, dpre @ w_hh, None, None


def forward(cell, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    """Returns y (T, B, H), h_n, c_n (None unless LSTM) and the tape for :func:`backward`."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    zero_bias = np.zeros(w_hh.shape[0], x.dtype)
    bi = zero_bias if b_ih is None else b_ih
    bh = zero_bias if b_hh is None else b_hh
    lengths = np.full(B, T) if lengths is None else lengths
    h, c = h0.copy(), (c0.copy() if cell == "lstm" else None)
    y = np.zeros((T, B, H), x.dtype)
    steps = []
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        active = (t < lengths)[:, None]  # rows past their length keep their state, output 0
        h_new, c_new, rec = _step(cell, x[t], h, c, w_ih, w_hh, bi, bh)
        steps.append(dict(t=t, active=active, h=h, c=c, rec=rec))
        h = np.where(active, h_new, h)
        if c is not None:
            c = np.where(active, c_new, c)
        y[t] = np.where(active, h_new, 0)
    tape = dict(cell=cell, x=x, w_ih=w_ih, w_hh=w_hh, has_bias=b_ih is not None, steps=steps)
    return y, h, c, tape


def backward(tape, dy=None, dh_n=None, dc_n=None):
    """Returns dx, dh0, dc0 (None unless LSTM), dw_ih, dw_hh, db_ih, db_hh (None without bias)."""
    cell, x, w_ih, w_hh = tape["cell"], tape["x"], tape["w_ih"], tape["w_hh"]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dh = np.zeros((B, H), x.dtype) if dh_n is None else dh_n.copy()
    dc = (np.zeros((B, H), x.dtype) if dc_n is None else dc_n.copy()) if cell == "lstm" else None
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros(w_ih.shape[0], x.dtype), np.zeros(w_ih.shape[0], x.dtype)
    for step in reversed(tape["steps"]):
        t, active, h = step["t"], step["active"], step["h"]
        dh_t = dh + (0 if dy is None else dy[t])
        dpre_x, dpre_h, dh_prev, dc_prev, rh = _step_backward(cell, step["rec"], h, step["c"],
                                                              dh_t, dc, w_hh)
        dpre_x, dpre_h = dpre_x * active, dpre_h * active  # rows past their length: no gradient
        dx[t] = dpre_x @ w_ih
        dw_ih += dpre_x.T @ x[t]
        db_ih += dpre_x.sum(0)
        db_hh += dpre_h.sum(0)
        if rh is None:
            dw_hh += dpre_h.T @ h
        else:
            dw_hh[:2 * H] += dpre_h[:, :2 * H].T @ h
            dw_hh[2 * H:] += dpre_h[:, 2 * H:].T @ rh
        dh = np.where(active, dh_prev, dh)
        if dc is not None:
            dc = np.where(active, dc_prev, dc)
    if not tape["has_bias"]:
        db_ih = db_hh = None
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh
