// Finding the bytes that delimit MLLP frames (see mllp.cpp). Internal, exposed for tests.
#pragma once

#include <cstddef>

namespace hl7::mllp::detail {

/// The first 0x0B or 0x1C in [p, end), or nullptr.
const char* find_block_byte_scalar(const char* p, const char* end) noexcept;

/// The first 0x0B or 0x1C among `size` bytes from `p`, or nullptr; the fastest of the
/// implementations below that the processor runs.
const char* find_block_byte(const char* p, std::size_t size) noexcept;

#if defined(__x86_64__)
const char* find_block_byte_sse2(const char* p, std::size_t size) noexcept;
/// Only on a processor with AVX2.
const char* find_block_byte_avx2(const char* p, std::size_t size) noexcept;
#endif

} // namespace hl7::mllp::detail
