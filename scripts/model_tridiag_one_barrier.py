"""Numerical model (numpy, float64) of a panel step of the large-matrix eigh's tridiagonal
reduction with ONE grid barrier per column instead of two — a design for a later session, not
used by the library. Run: python3 scripts/model_tridiag_one_barrier.py (prints ‖QTQᵀ − A‖ and the
eigenvalue error against numpy for a few sizes; both near 1e-14 when the design is right).

Today's `eb_panel_kernel` needs two reductions per column: (τ/2)·wᵀv of column j−1 ("kk", to
finish w) before column j can be updated, then ‖a'‖², Wᵀa', Vᵀa' of the updated column before its
reflector exists. The model removes the first dependency: the column is updated with the
unfinished w (a0), and since the finished update is a = a0 + 2·kk·v_{j−1}, every sum the reflector
needs follows from sums of a0 and v_{j−1} alone: ‖a'‖² = A + 4kk·B + 4kk²·C (A = Σa0², B = Σa0·v,
C = Σv²), Wᵀa' and Vᵀa' likewise (with −kk·B − 2kk²·C on the unfinished w's own term). So the
sums of column j+1 can be formed in the same phase as column j's product with the trailing matrix
(each block also forms w's entry j+1 itself: one extra row product), and one barrier per column
remains. A kernel must fall back to an exact second reduction where ‖a'‖² cancels (σ well below A
or 4kk²C), or the reflector loses orthogonality in proportion.

Tried on an H200 (session 18, not kept): a kernel built this way was correct (the 15 large-path
tests passed) but slower — 1024² 13.6 ms against 10.8 with two barriers, 4096² 95 against 71.
The correction 2kk·v is about as large as the column itself (kk ≈ (τ²/2)·vᵀAv), so σ falls below
a quarter of A + 4kk²C on most columns of a random matrix and the exact second reduction runs
anyway; and a float32 σ formed from those terms would lose about 70 ulps. The idea needs a
formulation without that cancellation before it can pay."""

import numpy as np


def larfg(alpha, sigma):
    if sigma == 0:
        return 0.0, alpha, 0.0
    beta = -np.copysign(np.sqrt(alpha * alpha + sigma), alpha)
    return (beta - alpha) / beta, beta, 1.0 / (alpha - beta)


def reduce(A, NB=8):
    """(F with the reflectors in rows, d, e, tau) by panels of NB columns, one reduction per column."""
    n = A.shape[0]
    F = A.copy()
    d, e, tau = np.zeros(n), np.zeros(n), np.zeros(n)
    rows = np.arange(n)
    for k0 in range(0, n, NB):
        ke = min(k0 + NB, n)
        W = np.zeros((NB, n))
        a0 = np.where(rows >= k0, F[k0], 0.0)  # column k0: no reflector of this panel yet
        wv = 0.0
        for j in range(k0, ke):
            c = j - k0
            kk = 0.5 * tau[j - 1] * wv if c > 0 else 0.0
            vprev = np.where(rows >= j, F[j - 1], 0.0) if c > 0 else np.zeros(n)
            if c > 0:
                vprev[j] = 1.0
            m2 = rows >= j + 2
            A_, B_, C_ = a0[m2] @ a0[m2], a0[m2] @ vprev[m2], vprev[m2] @ vprev[m2]
            V = F[k0:k0 + c]
            P = np.array([W[t][m2] @ a0[m2] + 2 * kk * (W[t][m2] @ vprev[m2]) for t in range(c)])
            Q = np.array([V[t][m2] @ a0[m2] + 2 * kk * (V[t][m2] @ vprev[m2]) for t in range(c)])
            if c > 0:
                P[c - 1] += -kk * B_ - 2 * kk * kk * C_
                W[c - 1] = np.where(rows >= j, W[c - 1] - kk * vprev, W[c - 1])
            a = a0 + 2 * kk * vprev
            d[j] = a[j]
            if j == n - 1:
                break
            t_, beta, sc = larfg(a[j + 1], A_ + 4 * kk * B_ + 4 * kk * kk * C_)
            e[j], tau[j] = beta, t_
            v = sc * np.where(m2, a, 0.0)
            v[j + 1] = 1
            p, q = sc * P + W[:c, j + 1], sc * Q + V[:, j + 1]
            y = np.zeros(n)
            y[j + 1:] = F[j + 1:, :] @ v
            w = t_ * (y - V.T @ p - W[:c].T @ q) if c else t_ * y
            w[:j + 1] = 0
            W[c] = w
            wv = w @ v
            F[j, k0 + 1:j + 1] = 0
            F[j, j + 1] = 1
            F[j, j + 2:] = v[j + 2:]
            # Column j+1 updated with w unfinished (kk of column j applied at the next step).
            V2 = F[k0:k0 + c + 1]
            a0 = F[j + 1].copy()
            for t in range(c + 1):
                a0 -= V2[t] * W[t][j + 1] + W[t] * V2[t][j + 1]
            a0[:j + 1] = 0
        if ke - 1 < n - 1:
            c = ke - 1 - k0
            W[c] = W[c] - 0.5 * tau[ke - 1] * wv * np.where(rows > ke - 1, F[ke - 1], 0)
            Vb, Wb = F[k0:ke, ke:], W[:ke - k0, ke:]
            F[ke:, ke:] -= Vb.T @ Wb + Wb.T @ Vb
    return F, d, e, tau


if __name__ == "__main__":
    for n, nb in [(37, 8), (50, 32), (64, 8), (200, 32)]:
        rng = np.random.default_rng(n)
        A = rng.standard_normal((n, n))
        A = A + A.T
        F, d, e, tau = reduce(A, nb)
        Q = np.eye(n)
        for j in range(n - 1):
            v = np.zeros(n)
            v[j + 1:] = F[j, j + 1:]
            Q = Q @ (np.eye(n) - tau[j] * np.outer(v, v))
        T = np.diag(d) + np.diag(e[:n - 1], 1) + np.diag(e[:n - 1], -1)
        print(f"n {n} panel {nb}: |QTQ^T - A| {np.abs(Q @ T @ Q.T - A).max():.1e}, "
              f"eigenvalues {np.abs(np.linalg.eigvalsh(T) - np.linalg.eigvalsh(A)).max():.1e}")
