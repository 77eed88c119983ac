// A fixed-width SIMD value for the CPU kernels, on top of the GCC/Clang vector
// extensions. The kernels are written once against Vec<T, W>; each entry point is
// compiled for several instruction sets (OFA_CPU_MULTIVERSION) and picked at load
// time, so one binary uses AVX-512 where the CPU has it and still runs elsewhere.
// Everything here is header-only plain C++: no torch, no intrinsics (one GCC builtin:
// the AVX-512 masked load of load_first).
#pragma once

#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#define OFA_INLINE inline __attribute__((always_inline))
#define OFA_VEC_EXT 1
#else
#define OFA_INLINE inline
#define OFA_VEC_EXT 0
#endif

// Compile an entry point for AVX-512, AVX2+FMA and the baseline; the loader's
// resolver picks the best one the CPU supports. GCC >= 8 on x86-64 ELF only.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) && \
    !defined(OFA_FAST_NO_MULTIVERSION)
#define OFA_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define OFA_CPU_MULTIVERSION
#endif

// Compile an entry point for AVX-512 alone (kernels too large to build three times);
// call it only when ofa_fast::cpu::has_avx512() says the CPU runs it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) && \
    !defined(OFA_FAST_NO_MULTIVERSION)
#define OFA_CPU_AVX512 __attribute__((target("arch=x86-64-v4")))
#define OFA_CPU_HAS_AVX512_TARGET 1
#else
#define OFA_CPU_HAS_AVX512_TARGET 0
#endif

namespace ofa_fast {
namespace cpu {

template <typename T, int W, bool UseExt = (OFA_VEC_EXT && W > 1)>
struct Vec;

#if OFA_VEC_EXT
template <typename T, int W>
struct Vec<T, W, true> {
  typedef T raw __attribute__((vector_size(sizeof(T) * W)));
  typedef T uraw __attribute__((vector_size(sizeof(T) * W), aligned(alignof(T)), may_alias));
  raw v;
  static OFA_INLINE Vec zero() {
    Vec r;
    r.v = raw{};
    return r;
  }
  static OFA_INLINE Vec load(const T* p) {
    Vec r;
    r.v = *reinterpret_cast<const uraw*>(p);
    return r;
  }
  static OFA_INLINE Vec splat(T s) {
    Vec r;
    r.v = raw{} + s;
    return r;
  }
  // The first n (<= W) lanes at p, zeros in the rest; reads nothing past p + n. For
  // 16 floats one AVX-512 masked load: only for code compiled for AVX-512
  // (OFA_CPU_AVX512), where the builtin expands.
  static OFA_INLINE Vec load_first(const T* p, int n) {
    Vec r;
#if OFA_CPU_HAS_AVX512_TARGET
    if constexpr (std::is_same_v<T, float> && W == 16) {
      r.v = __builtin_ia32_loadups512_mask(p, raw{}, static_cast<unsigned short>((1u << n) - 1));
      return r;
    }
#endif
    r.v = raw{};
    for (int i = 0; i < n; ++i) r.v[i] = p[i];
    return r;
  }
  OFA_INLINE void store(T* p) const { *reinterpret_cast<uraw*>(p) = v; }
  OFA_INLINE void fma(const Vec& a, const Vec& b) { v += a.v * b.v; }
  OFA_INLINE void fma(const Vec& a, T b) { v += a.v * b; }
  OFA_INLINE void add(const Vec& a) { v += a.v; }
  // Keep this value in a register: the compiler may otherwise fold every use of a load
  // into its multiply-add as a memory operand, reloading it once per use.
  OFA_INLINE void pin() {
#if defined(__x86_64__)
    __asm__("" : "+v"(v));
#endif
  }
  OFA_INLINE T sum() const {
    T s = 0;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
  }
};
#endif

// Portable fallback (and the scalar W == 1 case the channel tails use).
template <typename T, int W>
struct Vec<T, W, false> {
  T v[W];
  static OFA_INLINE Vec zero() {
    Vec r;
    for (int i = 0; i < W; ++i) r.v[i] = T(0);
    return r;
  }
  static OFA_INLINE Vec load(const T* p) {
    Vec r;
    for (int i = 0; i < W; ++i) r.v[i] = p[i];
    return r;
  }
  static OFA_INLINE Vec splat(T s) {
    Vec r;
    for (int i = 0; i < W; ++i) r.v[i] = s;
    return r;
  }
  static OFA_INLINE Vec load_first(const T* p, int n) {
    Vec r;
    for (int i = 0; i < W; ++i) r.v[i] = i < n ? p[i] : T(0);
    return r;
  }
  OFA_INLINE void store(T* p) const {
    for (int i = 0; i < W; ++i) p[i] = v[i];
  }
  OFA_INLINE void fma(const Vec& a, const Vec& b) {
    for (int i = 0; i < W; ++i) v[i] += a.v[i] * b.v[i];
  }
  OFA_INLINE void fma(const Vec& a, T b) {
    for (int i = 0; i < W; ++i) v[i] += a.v[i] * b;
  }
  OFA_INLINE void add(const Vec& a) {
    for (int i = 0; i < W; ++i) v[i] += a.v[i];
  }
  OFA_INLINE T sum() const {
    T s = 0;
    for (int i = 0; i < W; ++i) s += v[i];
    return s;
  }
};

// Whether this CPU runs OFA_CPU_AVX512 entry points (x86-64-v4's AVX-512 subsets).
inline bool has_avx512() {
#if OFA_CPU_HAS_AVX512_TARGET
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return yes;
#else
  return false;
#endif
}

// Elements in one 512-bit register: the natural block of the kernels.
template <typename T>
constexpr int kLanes = 64 / static_cast<int>(sizeof(T));

// A std::vector whose data starts on a 64-byte boundary, so the kernels' loads of its
// whole-register slots do not straddle two cache lines (malloc aligns to 16 bytes: in
// three buffers of four every such load touches two lines and costs two).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};
template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

// Transposes the V x V block held in rows[0..V) (row r = rows[r]) in place, in log2(V)
// stages; stage h swaps, within every pair of rows (r, r + h), the h-wide blocks off
// the diagonal. With GCC each swap is one two-source permute per row.
#if OFA_VEC_EXT && defined(__GNUC__) && !defined(__clang__)
template <typename T, int V, int H>
OFA_INLINE void transpose_stage(Vec<T, V>* rows) {
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> I;
  typedef I mask __attribute__((vector_size(sizeof(T) * V)));
  mask lo, hi;
  for (int e = 0; e < V; ++e) {
    lo[e] = (e & H) ? V + e - H : e;
    hi[e] = (e & H) ? V + e : e + H;
  }
  for (int r = 0; r < V; ++r) {
    if (r & H) continue;
    const auto x = rows[r].v, y = rows[r + H].v;
    rows[r].v = __builtin_shuffle(x, y, lo);
    rows[r + H].v = __builtin_shuffle(x, y, hi);
  }
}
template <typename T, int V, int H = V / 2>
OFA_INLINE void transpose(Vec<T, V>* rows) {
  if constexpr (H >= 1) {
    transpose_stage<T, V, H>(rows);
    transpose<T, V, H / 2>(rows);
  }
}
#else
template <typename T, int V>
OFA_INLINE void transpose(Vec<T, V>* rows) {
  T tmp[V][V];
  for (int r = 0; r < V; ++r) rows[r].store(tmp[r]);
  for (int r = 0; r < V; ++r) {
    T col[V];
    for (int e = 0; e < V; ++e) col[e] = tmp[e][r];
    rows[r] = Vec<T, V>::load(col);
  }
}
#endif

}  // namespace cpu
}  // namespace ofa_fast
