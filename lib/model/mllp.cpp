#include <hl7/model/mllp.hpp>

#include "model/mllp_scan.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace hl7::mllp {

std::string encode(std::string_view payload)
{
    std::string out;
    out.reserve(payload.size() + overhead);
    out += start_block;
    out += payload;
    out += end_block;
    out += carriage_return;
    return out;
}

outcome::result<std::size_t> encode_into(std::string_view payload, std::span<char> out) noexcept
{
    // Written so that a payload near SIZE_MAX cannot overflow the size check.
    if (out.size() < overhead || out.size() - overhead < payload.size())
        return errc::buffer_too_small;
    out[0] = start_block;
    std::copy(payload.begin(), payload.end(), out.begin() + 1);
    out[payload.size() + 1] = end_block;
    out[payload.size() + 2] = carriage_return;
    return payload.size() + overhead;
}

namespace detail {

// The first 0x0B or 0x1C among `size` bytes, or nullptr, in one pass looking for both.
// Two passes of memchr (one per byte) read everything twice and reach half of memchr's
// speed; this keeps close to it by testing a whole block per step and only locating the hit
// inside a block that has one. AVX2 is used when the processor has it (chosen at run time,
// as the build targets plain x86-64), SSE2 otherwise.
const char* find_block_byte_scalar(const char* p, const char* end) noexcept
{
    for (; p != end; ++p)
        if (*p == start_block || *p == end_block)
            return p;
    return nullptr;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) const char* find_block_byte_avx2(const char* p, std::size_t size) noexcept
{
    const char* const end = p + size;
    const __m256i sb = _mm256_set1_epi8(start_block);
    const __m256i eb = _mm256_set1_epi8(end_block);
    // One unaligned block, then on from the next 32-byte boundary: aligned loads never
    // straddle two cache lines.
    if (end - p >= 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        if (const auto mask = static_cast<unsigned>(
                _mm256_movemask_epi8(_mm256_or_si256(_mm256_cmpeq_epi8(v, sb), _mm256_cmpeq_epi8(v, eb)))))
            return p + __builtin_ctz(mask);
        p += 32 - reinterpret_cast<std::uintptr_t>(p) % 32;
    }
    for (; end - p >= 128; p += 128) {
        __m256i m[4];
        for (int i = 0; i < 4; ++i) {
            const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32 * i));
            m[i] = _mm256_or_si256(_mm256_cmpeq_epi8(v, sb), _mm256_cmpeq_epi8(v, eb));
        }
        if (_mm256_testz_si256(_mm256_or_si256(_mm256_or_si256(m[0], m[1]), _mm256_or_si256(m[2], m[3])),
                               _mm256_set1_epi8(-1)))
            continue;
        for (int i = 0; i < 4; ++i)
            if (const auto mask = static_cast<unsigned>(_mm256_movemask_epi8(m[i])))
                return p + 32 * i + __builtin_ctz(mask);
    }
    for (; end - p >= 32; p += 32) {
        const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
        if (const auto mask = static_cast<unsigned>(
                _mm256_movemask_epi8(_mm256_or_si256(_mm256_cmpeq_epi8(v, sb), _mm256_cmpeq_epi8(v, eb)))))
            return p + __builtin_ctz(mask);
    }
    return find_block_byte_scalar(p, end);
}

const char* find_block_byte_sse2(const char* p, std::size_t size) noexcept
{
    const char* const end = p + size;
    const __m128i sb = _mm_set1_epi8(start_block);
    const __m128i eb = _mm_set1_epi8(end_block);
    for (; end - p >= 16; p += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        if (const auto mask = static_cast<unsigned>(
                _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, sb), _mm_cmpeq_epi8(v, eb)))))
            return p + __builtin_ctz(mask);
    }
    return find_block_byte_scalar(p, end);
}

const char* find_block_byte(const char* p, std::size_t size) noexcept
{
    static const auto impl = __builtin_cpu_supports("avx2") ? find_block_byte_avx2 : find_block_byte_sse2;
    return impl(p, size);
}
#else
const char* find_block_byte(const char* p, std::size_t size) noexcept
{
    return find_block_byte_scalar(p, p + size);
}
#endif

} // namespace detail

namespace {

// Appends like std::string would, growing geometrically, but never reserves past `cap`.
void append_capped(std::string& buffer, std::string_view bytes, std::size_t cap)
{
    const std::size_t needed = buffer.size() + bytes.size();
    if (needed > buffer.capacity())
        buffer.reserve(std::min(cap, std::max(needed, 2 * buffer.capacity())));
    buffer.append(bytes);
}

} // namespace

decoder::decoder(std::size_t max_frame) noexcept
    : max_frame_(max_frame)
{
}

void decoder::feed(std::string_view chunk) noexcept
{
    input_ = chunk;
}

// Empties the buffer, and gives its memory back when a large frame made it grow.
void decoder::release() noexcept
{
    if (partial_.capacity() > retained_capacity)
        std::string().swap(partial_);
    else
        partial_.clear();
}

std::optional<outcome::result<std::string_view>> decoder::next()
{
    // The view handed out last may point into partial_: only now may a large buffer go, so
    // that one big frame does not pin its size for the rest of the connection.
    if (state_ == state::idle)
        release();
    for (;;) {
        if (input_.empty())
            return std::nullopt;

        if (state_ != state::in_frame) {
            if (after_end_) {
                after_end_ = false;
                if (input_.front() == carriage_return) {
                    input_.remove_prefix(1);
                    continue;
                }
            }
            // Frames usually follow each other back to back; spare a memchr call for that.
            auto start = input_.front() == start_block
                ? input_.data()
                : static_cast<const char*>(std::memchr(input_.data(), start_block, input_.size()));
            const auto gap = start ? static_cast<std::size_t>(start - input_.data()) : input_.size();
            // The tail of an oversized frame is dropped, not counted as noise.
            if (state_ == state::idle)
                skipped_ += gap;
            if (!start) {
                input_ = {};
                return std::nullopt;
            }
            input_.remove_prefix(gap + 1);
            state_ = state::in_frame;
            partial_.clear();
            continue;
        }

        // Inside a frame: at most `room` more payload bytes are allowed, so a scan never
        // looks further than one byte past the limit.
        const std::size_t room = max_frame_ - partial_.size();
        const std::size_t window = input_.size() <= room ? input_.size() : room + 1;
        const char* found = detail::find_block_byte(input_.data(), window);

        if (!found) {
            if (window > room) {
                state_ = state::discarding;
                release();
                input_.remove_prefix(window);
                return outcome::result<std::string_view>(errc::frame_too_large);
            }
            append_capped(partial_, input_, max_frame_);
            input_ = {};
            return std::nullopt;
        }

        const auto length = static_cast<std::size_t>(found - input_.data());
        if (*found == start_block) {
            // The new frame starts at this 0x0B: stay in_frame with an empty payload.
            release();
            input_.remove_prefix(length + 1);
            return outcome::result<std::string_view>(errc::invalid_frame);
        }

        std::string_view payload = input_.substr(0, length);
        if (!partial_.empty()) {
            append_capped(partial_, payload, max_frame_);
            payload = partial_;
        }
        input_.remove_prefix(length + 1);
        state_ = state::idle;
        if (input_.empty())
            after_end_ = true;
        else if (input_.front() == carriage_return)
            input_.remove_prefix(1);
        return outcome::result<std::string_view>(payload);
    }
}

} // namespace hl7::mllp
