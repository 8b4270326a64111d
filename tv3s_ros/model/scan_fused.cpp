// Fused CPU selective scan (Mamba v1, as mamba_ssm's selective_scan_fn), forward and backward.
// Built on first use by scan_fused.py with the system C++ compiler and called through ctypes
// (no torch headers, so it compiles in about two seconds). C ABI, fp32 (fp64 for gradient
// checks), any strides.
//
// Per sequence n, channel d, token t, state s:
//   dt_t = softplus(delta_t + bias)            (softplus optional)
//   h_t[s] = exp(dt_t A[s]) h_{t-1}[s] + dt_t u_t B_t[s]
//   y_t = (sum_s h_t[s] C_t[s] + D u_t) * silu(z_t)
// Why a kernel: the scan touches every (token, channel, state) element (210 million per B0
// 256x512 frame); PyTorch ops make one pass over memory each, here each element lives in
// registers for one exp and two multiply-adds, and the per-token softplus, skip and gate are
// fused in too. A lane group is W = 8 adjacent channels held in one GCC vector (AVX2: one
// register; the code is written with vector types so that it vectorises on any compiler
// setting), B_t and C_t are broadcast per state. Work is split by (sequence, channel group),
// never inside a sum, so results do not depend on the thread count.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

constexpr int W = 8;        // channels per lane group
constexpr int MAX_S = 64;   // largest state size (Mamba uses 16)
constexpr int PF = 8;       // tokens ahead for software prefetch (the conv)

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
// A C-style cast between two vector types of one size reinterprets the bits.

template <class T> struct VecOf;
template <> struct VecOf<float> { typedef v8f type; };
template <> struct VecOf<double> { typedef v8d type; };

template <class V> inline V splat(double v) { return V{} + static_cast<decltype(V{}[0])>(v); }

// ------------------------------------------------------------------ fp32 maths on 8 lanes

// 2^x: round to k, 2^f for f in [-1/2, 1/2] by a degree-6 Taylor polynomial (relative error
// 1.2e-7, like exp2f), times 2^k through the exponent bits. Below -124: 0 (the subnormal edge,
// and below fp32 resolution of any state it scales); above 127: inf; NaN stays NaN.
// NONPOS: the caller knows x <= 0 (dt >= 0 after softplus, A <= 0) or that a NaN x comes with a
// NaN or infinite dt, which reaches the state through dt * u anyway; then the range checks go
// (a third of the work of the hot loop) and results below 2^-124 are left to flush-to-zero.
template <bool NONPOS>
inline v8f vexp2(v8f x) {
  const v8f lo = splat<v8f>(-124.0), hi = splat<v8f>(127.0), shifter = splat<v8f>(12582912.0);
  const v8f xc = NONPOS ? (x > lo ? x : lo) : (x < lo ? lo : (x > hi ? hi : x));
  const v8f t = xc + shifter;                          // 1.5 * 2^23: adding it rounds to integer
  const v8i k = (v8i)t - 0x4B400000;
  const v8f f = xc - (t - shifter);
  v8f p = splat<v8f>(1.5403530393381609e-4);           // ln2^i / i!, i = 6 .. 0
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  v8f out = (v8f)((v8i)p + (k << 23));
  if (NONPOS) return out;
  out = x < lo ? splat<v8f>(0.0) : out;
  out = x > hi ? splat<v8f>(INFINITY) : out;
  return x != x ? x : out;
}

// e^x for the per-token softplus and gate: Cody-Waite reduction to |r| <= ln2/2, degree-7
// Taylor polynomial (relative error ~1e-8); 0 below -86, inf above 88, NaN stays NaN.
inline v8f vexp(v8f x) {
  const v8f lo = splat<v8f>(-86.0), hi = splat<v8f>(88.0), shifter = splat<v8f>(12582912.0);
  const v8f xc = x < lo ? lo : (x > hi ? hi : x);
  const v8f t = xc * 1.44269504088896341f + shifter;
  const v8i k = (v8i)t - 0x4B400000;
  const v8f kf = t - shifter;
  const v8f r = (xc - kf * 0.693145751953125f) - kf * 1.428606765330187045e-06f;
  v8f p = splat<v8f>(1.0 / 5040.0);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  v8f out = (v8f)((v8i)p + (k << 23));
  out = x < lo ? splat<v8f>(0.0) : out;
  out = x > hi ? splat<v8f>(INFINITY) : out;
  return x != x ? x : out;
}

// ln(y) for finite y >= 1: y = m 2^e with m in [sqrt(1/2), sqrt(2)), ln(m) by the Cephes logf
// polynomial (relative error ~1e-7).
inline v8f vlog(v8f y) {
  const v8i bits = (v8i)y;
  v8i e = ((bits >> 23) & 0xff) - 126;
  v8f m = (v8f)((bits & 0x007fffff) | 0x3f000000);     // in [0.5, 1)
  const v8i small = m < 0.70710678118654752f;
  e = small ? e - 1 : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const v8f z = m * m;
  v8f p = splat<v8f>(7.0376836292e-2);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  const v8f ef = __builtin_convertvector(e, v8f);
  const v8f r = m * z * p + ef * -2.12194440e-4f - 0.5f * z;
  return m + r + ef * 0.693359375f;
}

// softplus like torch's (threshold 20): log1p(e^x), with the rounding of 1 + e^x corrected
// (Goldberg: log(u) * e / (u - 1) where u = 1 + e as rounded).
inline v8f vsoftplus(v8f x) {
  const v8f e = vexp(x);
  const v8f u = 1.0f + e;
  const v8f d = u - 1.0f;
  const v8f safe_d = d == 0.0f ? splat<v8f>(1.0) : d;
  const v8f lp = d == 0.0f ? e : vlog(u) * (e / safe_d);
  return x > 20.0f ? x : lp;
}
inline v8f vsigmoid(v8f x) { return 1.0f / (1.0f + vexp(-x)); }

// ------------------------------------------------------------------ fp64 (gradient checks only)
// The library functions, lane by lane.

template <bool NONPOS>
inline v8d vexp2(v8d x) {
  for (int k = 0; k < W; ++k) x[k] = std::exp2(x[k]);
  return x;
}
inline v8d vsoftplus(v8d x) {
  for (int k = 0; k < W; ++k) x[k] = x[k] > 20.0 ? x[k] : std::log1p(std::exp(x[k]));
  return x;
}
inline v8d vsigmoid(v8d x) {
  for (int k = 0; k < W; ++k) x[k] = 1.0 / (1.0 + std::exp(-x[k]));
  return x;
}

// Subnormal floats are 10-100x slower on x86; the scan's decays drift through them (products
// of small decays). Flush them to zero while the kernel runs (restored after): what is lost is
// below 1e-38 of a state.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }   // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// ------------------------------------------------------------------ arguments

// A strided [n, l, c] view (c: channel or state), element strides.
struct View {
  void* p;
  int64_t sn, sl, sc;
};

// Everything one call needs; the ctypes Structure in scan_fused.py mirrors this layout.
struct ScanArgs {
  View delta, u, B, C, z, y, gy;        // z may have p == null (no gate); y forward, gy backward
  void* A;                              // [d, s] contiguous
  void* D;                              // [d] or null
  void* delta_bias;                     // [d] or null
  void* h0;                             // [n, d, s] contiguous
  void* h_last;                         // [n, d, s] forward output
  void* gh;                             // [n, d, s] gradient of h_last, or null
  void* g_delta;                        // backward outputs, [n, l, d] contiguous:
  void* g_u;
  void* g_z;                            //   (null when there is no gate)
  void* g_h0;                           // [n, d, s]
  void* g_A;                            // [n, d, s] per sequence (the caller sums over n)
  void* g_D;                            // [n, d] per sequence
  void* g_bias;                         // [n, d] per sequence
  void* g_B;                            // [parts, n, l, s], zeroed by the caller
  void* g_C;                            // [parts, n, l, s], zeroed by the caller
  int64_t n, l, d, s, parts;
  int32_t softplus, threads;
};

template <class T>
struct Reader {
  typedef typename VecOf<T>::type V;
  const T* p;
  int64_t sn, sl, sc;
  explicit Reader(const View& v) : p(static_cast<const T*>(v.p)), sn(v.sn), sl(v.sl), sc(v.sc) {}
  inline T at(int64_t n, int64_t l, int64_t c) const { return p[n * sn + l * sl + c * sc]; }
  inline void prefetch(int64_t n, int64_t t, int64_t d0) const {
    if (p) __builtin_prefetch(p + n * sn + t * sl + d0 * sc);
  }
  // W channels of one token, zeros beyond the last channel
  inline V lanes(int64_t n, int64_t t, int64_t d0, int count) const {
    V v;
    if (count == W && sc == 1) {
      std::memcpy(&v, p + n * sn + t * sl + d0, sizeof v);
    } else {
      v = V{};
      for (int k = 0; k < count; ++k) v[k] = at(n, t, d0 + k);
    }
    return v;
  }
};

template <class T, class V>
inline void store_lanes(T* p, int64_t stride, V v, int count) {
  if (count == W && stride == 1) {
    std::memcpy(p, &v, sizeof v);
  } else {
    for (int k = 0; k < count; ++k) p[k * stride] = v[k];
  }
}

// Run task(i, thread id) for i in [0, count) on up to `threads` threads (dynamic balance).
// Built with OpenMP (the default), the tasks run on the OpenMP pool: loaded after torch, this
// library binds to the libgomp.so.1 torch already loaded, so the workers are torch's own, hot
// from the last matmul. Threads of our own would compete with those, which spin-wait for a
// while after every torch op (on 2 cores a scan right after a matmul took a third longer).
template <class F>
void parallel_for(int64_t count, int threads, F task) {
  if (threads <= 1 || count <= 1) {
    FlushDenormals ftz;
    for (int64_t i = 0; i < count; ++i) task(i, 0);
    return;
  }
  if (threads > count) threads = static_cast<int>(count);
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    const int id = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) task(i, id);
  }
#else
  std::atomic<int64_t> next(0);
  auto worker = [&](int id) {
    FlushDenormals ftz;
    for (int64_t i = next.fetch_add(1); i < count; i = next.fetch_add(1)) task(i, id);
  };
  std::vector<std::thread> pool;
  for (int id = 1; id < threads; ++id) pool.emplace_back(worker, id);
  worker(0);
  for (auto& th : pool) th.join();
#endif
}

// One lane group: the channel constants, and the per-token inputs of the current token.
template <class T>
struct Lanes {
  typedef typename VecOf<T>::type V;
  int count;
  bool nonpos;                         // every dt*A <= 0 (see vexp2)
  V a2[MAX_S];                         // A * log2(e): exp(dt A) = 2^(dt a2)
  V a[MAX_S];                          // A
  V skip, bias;
  V xr, dt, u, dtu, z;                 // delta + bias, dt, u, dt*u, gate input

  Lanes(const ScanArgs& g, int64_t d0) {
    const T* A = static_cast<const T*>(g.A);
    const T* D = static_cast<const T*>(g.D);
    const T* bias_p = static_cast<const T*>(g.delta_bias);
    const int64_t s = g.s;
    count = static_cast<int>(g.d - d0 < W ? g.d - d0 : W);
    nonpos = g.softplus != 0;          // dt = softplus(.) >= 0; A <= 0 (NaN fails the test)
    skip = bias = V{};
    for (int64_t j = 0; j < s; ++j) {
      a[j] = V{};
      for (int k = 0; k < count; ++k) a[j][k] = A[(d0 + k) * s + j];
      a2[j] = a[j] * static_cast<T>(1.4426950408889634);
      for (int k = 0; k < W; ++k) nonpos = nonpos && a[j][k] <= T(0);
    }
    for (int k = 0; k < count; ++k) {
      if (D) skip[k] = D[d0 + k];
      if (bias_p) bias[k] = bias_p[d0 + k];
    }
  }
  void load_token(const ScanArgs& g, const Reader<T>& vdelta, const Reader<T>& vu, const Reader<T>& vz,
                  int64_t n, int64_t t, int64_t d0) {
    xr = vdelta.lanes(n, t, d0, count) + bias;
    u = vu.lanes(n, t, d0, count);
    z = vz.p ? vz.lanes(n, t, d0, count) : V{};
    dt = g.softplus ? vsoftplus(xr) : xr;
    dtu = dt * u;
  }
};

// ------------------------------------------------------------------ forward

template <class T>
void scan_fwd(const ScanArgs& g) {
  typedef typename VecOf<T>::type V;
  const Reader<T> vdelta(g.delta), vu(g.u), vb(g.B), vc(g.C), vz(g.z);
  T* y = static_cast<T*>(g.y.p);
  const T* h0 = static_cast<const T*>(g.h0);
  T* h_last = static_cast<T*>(g.h_last);
  const int64_t n = g.n, l = g.l, d = g.d, s = g.s, groups = (d + W - 1) / W;
  parallel_for(n * groups, g.threads, [&](int64_t task, int) {
    const int64_t bn = task / groups, d0 = (task % groups) * W;
    Lanes<T> ln(g, d0);
    V h[MAX_S];
    for (int64_t j = 0; j < s; ++j) {
      h[j] = V{};
      for (int k = 0; k < ln.count; ++k) h[j][k] = h0[(bn * d + d0 + k) * s + j];
    }
    auto tokens = [&](auto nonpos) {
      constexpr bool NONPOS = decltype(nonpos)::value;
      for (int64_t t = 0; t < l; ++t) {
        ln.load_token(g, vdelta, vu, vz, bn, t, d0);
        // Locals, so that the stores to h cannot be taken to change them (aliasing).
        const V dt = ln.dt, dtu = ln.dtu;
        const T* b_row = vb.p + bn * vb.sn + t * vb.sl;
        const T* c_row = vc.p + bn * vc.sn + t * vc.sl;
        V acc = ln.skip * ln.u;
        for (int64_t j = 0; j < s; ++j) {
          const V hj = vexp2<NONPOS>(dt * ln.a2[j]) * h[j] + dtu * b_row[j * vb.sc];
          h[j] = hj;
          acc += hj * c_row[j * vc.sc];
        }
        if (vz.p) acc *= ln.z * vsigmoid(ln.z);
        store_lanes(y + bn * g.y.sn + t * g.y.sl + d0 * g.y.sc, g.y.sc, acc, ln.count);
      }
    };
    if (ln.nonpos) tokens(std::true_type{}); else tokens(std::false_type{});
    for (int64_t j = 0; j < s; ++j)
      for (int k = 0; k < ln.count; ++k) h_last[(bn * d + d0 + k) * s + j] = h[j][k];
  });
}

// ------------------------------------------------------------------ backward

template <class T>
void scan_bwd(const ScanArgs& g) {
  typedef typename VecOf<T>::type V;
  const Reader<T> vdelta(g.delta), vu(g.u), vb(g.B), vc(g.C), vz(g.z), vgy(g.gy);
  const T* h0 = static_cast<const T*>(g.h0);
  const T* gh = static_cast<const T*>(g.gh);
  T *g_delta = static_cast<T*>(g.g_delta), *g_u = static_cast<T*>(g.g_u), *g_z = static_cast<T*>(g.g_z);
  T *g_h0 = static_cast<T*>(g.g_h0), *g_A = static_cast<T*>(g.g_A);
  T *g_D = static_cast<T*>(g.g_D), *g_bias = static_cast<T*>(g.g_bias);
  const int64_t n = g.n, l = g.l, d = g.d, s = g.s, parts = g.parts, groups = (d + W - 1) / W;
  const int64_t per_part = (groups + parts - 1) / parts;
  // Per thread: the states h_0..h_L of one lane group (the reverse pass needs h_{t-1}).
  std::vector<std::vector<V>> states(g.threads > 0 ? g.threads : 1);
  parallel_for(n * parts, g.threads, [&](int64_t task, int id) {
    const int64_t bn = task / parts, part = task % parts;
    T* gB = static_cast<T*>(g.g_B) + (part * n + bn) * l * s;
    T* gC = static_cast<T*>(g.g_C) + (part * n + bn) * l * s;
    std::vector<V>& hs = states[id];
    hs.resize(static_cast<size_t>((l + 1) * s));
    for (int64_t grp = part * per_part; grp < (part + 1) * per_part && grp < groups; ++grp) {
      const int64_t d0 = grp * W;
      Lanes<T> ln(g, d0);
      V gs[MAX_S], ga[MAX_S];
      for (int64_t j = 0; j < s; ++j) {
        hs[j] = gs[j] = ga[j] = V{};
        for (int k = 0; k < ln.count; ++k) {
          hs[j][k] = h0[(bn * d + d0 + k) * s + j];
          if (gh) gs[j][k] = gh[(bn * d + d0 + k) * s + j];
        }
      }
      V gskip = V{}, gbias = V{};
      auto run = [&](auto nonpos) {
        constexpr bool NONPOS = decltype(nonpos)::value;
        // Recompute the states (same arithmetic as the forward, so the same values).
        for (int64_t t = 0; t < l; ++t) {
          ln.load_token(g, vdelta, vu, vz, bn, t, d0);
          const V* prev = &hs[t * s];
          V* cur = &hs[(t + 1) * s];
          for (int64_t j = 0; j < s; ++j)
            cur[j] = vexp2<NONPOS>(ln.dt * ln.a2[j]) * prev[j] + ln.dtu * vb.at(bn, t, j);
        }
        // Reverse: gs = dL/dh_t (from y_t and from h_{t+1}), then into a_t, dt_t, u_t, B_t, C_t.
        for (int64_t t = l - 1; t >= 0; --t) {
          ln.load_token(g, vdelta, vu, vz, bn, t, d0);
          const V gy = vgy.lanes(bn, t, d0, ln.count);
          const V sig_z = vz.p ? vsigmoid(ln.z) : V{};
          const V gate = vz.p ? ln.z * sig_z : splat<V>(1.0);
          const V gcore = gy * gate;                       // dL/d(<h_t, C_t> + D u_t)
          V core = ln.skip * ln.u;
          V gdt = V{};
          V gu = gcore * ln.skip;
          gskip += gcore * ln.u;
          const V* prev = &hs[t * s];
          const V* cur = &hs[(t + 1) * s];
          for (int64_t j = 0; j < s; ++j) {
            const T bj = vb.at(bn, t, j), cj = vc.at(bn, t, j);
            const V a = vexp2<NONPOS>(ln.dt * ln.a2[j]);
            const V gsum = gs[j] + gcore * cj;             // dL/dh_t
            const V gz = gsum * prev[j] * a;               // dL/d(dt_t A)
            core += cur[j] * cj;
            const V pc = gcore * cur[j], pb = gsum * ln.dtu;
            T sum_c = 0, sum_b = 0;
            for (int k = 0; k < W; ++k) {
              sum_c += pc[k];
              sum_b += pb[k];
            }
            gB[t * s + j] += sum_b;
            gC[t * s + j] += sum_c;
            gdt += gz * ln.a[j] + gsum * ln.u * bj;
            gu += gsum * ln.dt * bj;
            ga[j] += gz * ln.dt;
            gs[j] = gsum * a;                              // carried to h_{t-1}
          }
          if (g.softplus) {                                // d softplus(x)/dx = sigmoid(x), x <= 20
            const V sig_x = vsigmoid(ln.xr);
            gdt = ln.xr > static_cast<T>(20) ? gdt : gdt * sig_x;
          }
          gbias += gdt;
          const int64_t row = (bn * l + t) * d + d0;
          store_lanes(g_delta + row, 1, gdt, ln.count);
          store_lanes(g_u + row, 1, gu, ln.count);
          if (vz.p)                                        // silu'(z) = sig(z) (1 + z (1 - sig(z)))
            store_lanes(g_z + row, 1, gy * core * sig_z * (static_cast<T>(1) + ln.z * (static_cast<T>(1) - sig_z)),
                        ln.count);
        }
      };
      if (ln.nonpos) run(std::true_type{}); else run(std::false_type{});
      for (int64_t j = 0; j < s; ++j)
        for (int k = 0; k < ln.count; ++k) {
          g_h0[(bn * d + d0 + k) * s + j] = gs[j][k];
          g_A[(bn * d + d0 + k) * s + j] = ga[j][k];
        }
      for (int k = 0; k < ln.count; ++k) {
        g_D[bn * d + d0 + k] = gskip[k];
        g_bias[bn * d + d0 + k] = gbias[k];
      }
    }
  });
}


// ------------------------------------------------------------------ causal conv1d (+ SiLU)
// Depthwise causal conv over tokens with the previous call's last K-1 inputs (the tail):
//   out_t = act(bias + sum_i w[i] x_{t-K+1+i}),  act = SiLU or identity.
// Token-major in and out, so the mixer's projections read and write contiguous rows (in
// PyTorch the conv needs a channel-major copy of its input, a slow transposition).

constexpr int MAX_K = 16;

struct ConvArgs {
  View x;                               // [n, l, d] view of the input
  void* weight;                         // [d, k] contiguous
  void* bias;                           // [d] or null
  void* tail;                           // [n, d, k-1] contiguous or null (zeros)
  void* out;                            // [n, l, d] contiguous
  void* new_tail;                       // [n, d, k-1] contiguous
  int64_t n, l, d, k;
  int32_t silu, threads;
};

// Work is split by (sequence, block of CONV_BLOCK lane groups) and walks the tokens with all
// groups of the block side by side: each token reads and writes one contiguous run of
// CONV_BLOCK * W channels. (One group per walk read 32 bytes per token at a stride of 2-4 KB,
// the same few cache sets every time: conflict misses made the conv 4x slower.)
constexpr int CONV_BLOCK = 16;

template <class T>
void conv_fwd(const ConvArgs& g) {
  typedef typename VecOf<T>::type V;
  const Reader<T> vx(g.x);
  const T* weight = static_cast<const T*>(g.weight);
  const T* bias = static_cast<const T*>(g.bias);
  const T* tail = static_cast<const T*>(g.tail);
  T* out = static_cast<T*>(g.out);
  T* new_tail = static_cast<T*>(g.new_tail);
  const int64_t n = g.n, l = g.l, d = g.d, k = g.k, groups = (d + W - 1) / W;
  const int64_t blocks = (groups + CONV_BLOCK - 1) / CONV_BLOCK;
  parallel_for(n * blocks, g.threads, [&](int64_t task, int) {
    const int64_t bn = task / blocks, g0 = (task % blocks) * CONV_BLOCK;
    const int64_t g1 = g0 + CONV_BLOCK < groups ? g0 + CONV_BLOCK : groups;
    // Per group: weights, bias, and hist[i] = the input i steps before the window end.
    V w[CONV_BLOCK][MAX_K], hist[CONV_BLOCK][MAX_K], b[CONV_BLOCK];
    int count[CONV_BLOCK];
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t j = grp - g0, d0 = grp * W;
      count[j] = static_cast<int>(d - d0 < W ? d - d0 : W);
      b[j] = V{};
      for (int64_t i = 0; i < k; ++i) {
        w[j][i] = hist[j][i] = V{};
        for (int c = 0; c < count[j]; ++c) {
          w[j][i][c] = weight[(d0 + c) * k + i];
          if (tail && i < k - 1) hist[j][i][c] = tail[(bn * d + d0 + c) * (k - 1) + i];
        }
      }
      for (int c = 0; c < count[j] && bias; ++c) b[j][c] = bias[d0 + c];
    }
    const int64_t run = (g1 - g0) * W;                 // channels of the block
    for (int64_t t = 0; t < l; ++t) {
      // Each token's row starts a new page (strides of 2-4 KB), where the hardware prefetcher
      // stops: fetch the block's part of the row PF tokens ahead.
      if (t + PF < l && vx.sc == 1)
        for (int64_t c = 0; c < run; c += 64 / sizeof(T)) vx.prefetch(bn, t + PF, g0 * W + c);
      for (int64_t grp = g0; grp < g1; ++grp) {
        const int64_t j = grp - g0, d0 = grp * W;
        V* h = hist[j];
        h[k - 1] = vx.lanes(bn, t, d0, count[j]);   // h[0..k-1] = x_{t-k+1} .. x_t
        V acc = b[j];
        for (int64_t i = 0; i < k; ++i) acc += w[j][i] * h[i];
        if (g.silu) acc *= vsigmoid(acc);
        store_lanes(out + (bn * l + t) * d + d0, 1, acc, count[j]);
        for (int64_t i = 0; i + 1 < k; ++i) h[i] = h[i + 1];
      }
    }
    for (int64_t grp = g0; grp < g1; ++grp) {
      const int64_t j = grp - g0, d0 = grp * W;
      for (int64_t i = 0; i + 1 < k; ++i)
        for (int c = 0; c < count[j]; ++c) new_tail[(bn * d + d0 + c) * (k - 1) + i] = hist[j][i][c];
    }
  });
}

}  // namespace

extern "C" {
int tv3s_openmp() {
#if defined(_OPENMP)
  return 1;
#else
  return 0;
#endif
}
void tv3s_scan_fwd_f32(const ScanArgs* args) { scan_fwd<float>(*args); }
void tv3s_scan_fwd_f64(const ScanArgs* args) { scan_fwd<double>(*args); }
void tv3s_scan_bwd_f32(const ScanArgs* args) { scan_bwd<float>(*args); }
void tv3s_scan_bwd_f64(const ScanArgs* args) { scan_bwd<double>(*args); }
void tv3s_conv_fwd_f32(const ConvArgs* args) { conv_fwd<float>(*args); }
void tv3s_conv_fwd_f64(const ConvArgs* args) { conv_fwd<double>(*args); }
}
