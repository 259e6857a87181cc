#include <hl7/mllp.hpp>

#include <algorithm>
#include <cstring>

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

namespace {

// The first 0x0B or 0x1C among `size` bytes, or nullptr. Two memchr passes beat a single
// hand-written pass: the first streams the bytes in, the second rescans them in L1.
const char* find_block_byte(const char* first, std::size_t size) noexcept
{
    auto end = static_cast<const char*>(std::memchr(first, end_block, size));
    auto start = static_cast<const char*>(std::memchr(first, start_block, end ? static_cast<std::size_t>(end - first) : size));
    return start ? start : end;
}

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

outcome::result<std::string_view> decoder::next()
{
    for (;;) {
        if (input_.empty())
            return errc::need_more;

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
                return errc::need_more;
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
        const char* found = find_block_byte(input_.data(), window);

        if (!found) {
            if (window > room) {
                state_ = state::discarding;
                partial_.clear();
                input_.remove_prefix(window);
                return errc::frame_too_large;
            }
            append_capped(partial_, input_, max_frame_);
            input_ = {};
            return errc::need_more;
        }

        const auto length = static_cast<std::size_t>(found - input_.data());
        if (*found == start_block) {
            // The new frame starts at this 0x0B: stay in_frame with an empty payload.
            partial_.clear();
            input_.remove_prefix(length + 1);
            return errc::malformed_frame;
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
        return payload;
    }
}

} // namespace hl7::mllp
