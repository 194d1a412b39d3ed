"""Prototype (numpy, float64) for a possible CPU eigh eigenvector method: T split where the QL
would deflate, eigenvalues per block, each eigenvector by one twisted factorization, Gram-Schmidt
inside clusters; prints orthogonality and residual on random and structured 64x64 inputs.
python scripts/proto_cpu_twisted.py (needs numpy only)."""
import numpy as np
rng = np.random.default_rng(0)

def tridiag(a):
    a = a.copy(); n = a.shape[0]
    for k in range(n - 2):
        x = a[k+1:, k].copy()
        alpha = -np.copysign(np.linalg.norm(x), x[0])
        v = x; v[0] -= alpha
        nv = np.linalg.norm(v)
        if nv == 0: continue
        v /= nv
        a[k+1:, :] -= 2 * np.outer(v, v @ a[k+1:, :])
        a[:, k+1:] -= 2 * np.outer(a[:, k+1:] @ v, v)
    return np.diag(a).copy(), np.diag(a, -1).copy()

def twisted(d, e, lam, tiny):
    # all eigenvalues at once (vectorized over lam)
    n = len(d); m = len(lam)
    Dp = np.empty((n, m)); Dm = np.empty((n, m)); L = np.empty((n-1, m)); U = np.empty((n-1, m))
    Dp[0] = d[0] - lam
    for i in range(n-1):
        Dp[i] = np.where(np.abs(Dp[i]) < tiny, tiny, Dp[i])
        L[i] = e[i] / Dp[i]
        Dp[i+1] = d[i+1] - lam - L[i] * e[i]
    Dm[n-1] = d[n-1] - lam
    for i in range(n-2, -1, -1):
        Dm[i+1] = np.where(np.abs(Dm[i+1]) < tiny, tiny, Dm[i+1])
        U[i] = e[i] / Dm[i+1]
        Dm[i] = d[i] - lam - U[i] * e[i]
    gam = Dp + Dm - (d[:, None] - lam)
    r = np.argmin(np.abs(gam), axis=0)
    Z = np.zeros((n, m))
    for j in range(m):
        z = np.zeros(n); z[r[j]] = 1.0
        for i in range(r[j]-1, -1, -1): z[i] = -L[i, j] * z[i+1]
        for i in range(r[j], n-1): z[i+1] = -U[i, j] * z[i]
        Z[:, j] = z / np.linalg.norm(z)
    return Z

def gs_clusters(Z, lam, tol):
    Z = Z.copy(); n = len(lam); j = 0
    while j < n:
        k = j
        while k + 1 < n and lam[k+1] - lam[k] <= tol: k += 1
        if k > j:
            q, _ = np.linalg.qr(Z[:, j:k+1]); Z[:, j:k+1] = q
        j = k + 1
    return Z

def vectors(d, e, tol_rel, split_rel=float(np.finfo(np.float32).eps)):
    """T's eigenvalues and vectors: T split where |e| <= split_rel*||T|| (as the QL deflates float32 data),
    each block's eigenvalues (LAPACK here; the QL's in the real code), twisted vectors in f64,
    Gram-Schmidt (QR) inside clusters closer than tol_rel*||T||."""
    n = len(d)
    nt = max(np.abs(d).max() + 2 * (np.abs(e).max() if len(e) else 0.0), 1e-300)
    cuts = [0] + [i + 1 for i in range(n - 1) if abs(e[i]) <= split_rel * nt] + [n]
    lam = np.empty(n); Z = np.zeros((n, n))
    for b0, b1 in zip(cuts[:-1], cuts[1:]):
        db, eb = d[b0:b1], e[b0:b1 - 1]
        if b1 - b0 == 1:
            lam[b0] = db[0]; Z[b0, b0] = 1.0; continue
        Tb = np.diag(db) + np.diag(eb, 1) + np.diag(eb, -1)
        lb = np.linalg.eigvalsh(Tb)
        Zb = twisted(db, eb, lb, np.finfo(float).eps * nt * 1e-3)
        if tol_rel:
            Zb = gs_clusters(Zb, lb, tol_rel * nt)
        lam[b0:b1] = lb; Z[b0:b1, b0:b1] = Zb
    return lam, Z, len(cuts) - 2


def check(name, a, tols=(0, 1e-10, 1e-6)):
    d, e = tridiag(a)
    T = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
    nt = max(np.abs(T).sum(1).max(), 1e-300)
    out = []
    for tol in tols:
        lam, Z, splits = vectors(d, e, tol)
        orth = np.abs(Z.T @ Z - np.eye(len(d))).max()
        res = np.abs(T @ Z - Z * lam).max() / nt
        out.append(f"tol {tol:.0e}: orth {orth:.1e} res {res:.1e}")
    print(f"{name:26s} splits {splits:2d} " + " | ".join(out))


n = 64
for t in range(3):
    g = rng.standard_normal((n, n)).astype(np.float32).astype(np.float64); check(f"random {t}", g + g.T)
q, _ = np.linalg.qr(rng.standard_normal((n, n)))
check("3 repeated values", (q * np.repeat([2.0, -1.0, 0.5], 22)[:n]) @ q.T)
check("pairs 1e-9 apart", (q * (np.repeat(np.arange(32.0), 2) + np.tile([0, 1e-9], 32))) @ q.T)
check("pairs 1e-6 apart", (q * (np.repeat(np.arange(32.0), 2) + np.tile([0, 1e-6], 32))) @ q.T)
check("cond 1e6", (q * np.logspace(0, -6, n)) @ q.T)
check("rank 5", (q * np.r_[rng.standard_normal(5), np.zeros(n-5)]) @ q.T)
W = np.diag(np.abs(np.arange(n) - n // 2).astype(float)) + np.diag(np.ones(n-1), 1) + np.diag(np.ones(n-1), -1)
check("wilkinson", W)
check("identity", np.eye(n))
check("zero", np.zeros((n, n)))
g = rng.standard_normal((n, 8)); check("gram of 64x8 (svd-like)", g @ g.T)
