// MLLP (Minimal Lower Layer Protocol) framing, without I/O.
//
// A frame is `0x0B payload 0x1C 0x0D`. The encoder wraps a payload; the decoder takes a
// byte stream in chunks of any size and hands out payloads. Neither does any I/O, so the
// same code serves the client, the server, the tools and the tests.
#pragma once

#include <hl7/error.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace hl7::mllp {

inline constexpr char start_block = '\x0b';
inline constexpr char end_block = '\x1c';
inline constexpr char carriage_return = '\x0d';
/// Bytes that framing adds to a payload.
inline constexpr std::size_t overhead = 3;
/// Default largest payload the decoder accepts: 16 MiB.
inline constexpr std::size_t default_max_frame = std::size_t{16} << 20;

/// Returns `payload` framed: `0x0B payload 0x1C 0x0D`.
/// Thread safety: pure function.
std::string encode(std::string_view payload);

/// Writes `payload` framed into `out` and returns the number of bytes written
/// (`payload.size() + overhead`), or errc::buffer_too_small, leaving `out` untouched.
/// Thread safety: pure function.
outcome::result<std::size_t> encode_into(std::string_view payload, std::span<char> out) noexcept;

/// Incremental MLLP decoder.
///
/// Feed it a chunk with feed(), then call next() until it has nothing more:
///
///     decoder.feed(chunk);
///     while (auto frame = decoder.next()) {
///         if (*frame) use(frame->value());
///         else report(frame->error());  // frame_too_large or invalid_frame; decoding goes on
///     }
///
/// Leniency: bytes outside frames (noise, a LF after `0x1C 0x0D`, keep-alive bytes) are
/// skipped and counted; a frame ends at `0x1C` whether or not `0x0D` follows (a `0x0D`
/// right after it is consumed as part of the frame's trailer).
///
/// Errors, after each of which decoding continues with the following bytes:
///   - errc::frame_too_large: a payload passed max_frame bytes. Its bytes are dropped as
///     they arrive (never buffered) up to the next `0x0B`, where decoding resumes.
///   - errc::invalid_frame: a `0x0B` arrived inside an unfinished frame. The unfinished
///     frame is dropped and a new frame starts at that `0x0B`.
///
/// Memory: a frame that lies wholly inside one chunk is handed out as a view into that
/// chunk, without copying. A frame split across chunks is gathered in an internal buffer
/// (at most max_frame bytes), and the view points into that buffer. A buffer that grew past
/// 64 KiB is released on the next call, and when a frame is dropped (too large, or cut short
/// by a new start block), so that one large frame does not keep its memory for the rest of
/// the stream.
///
/// Thread safety: distinct objects are independent; one object must not be used
/// concurrently.
class decoder {
public:
    explicit decoder(std::size_t max_frame = default_max_frame) noexcept;

    /// Gives the decoder the next chunk of the stream. The chunk must stay valid and
    /// unchanged until next() returns nullopt; only then may feed() be called again.
    void feed(std::string_view chunk) noexcept;

    /// The next step of decoding: nullopt when the fed bytes are used up (feed more), else
    /// the next complete payload or an error, errc::frame_too_large or errc::invalid_frame
    /// as described above. The returned view is valid until the following call to next()
    /// or feed().
    std::optional<outcome::result<std::string_view>> next();

    /// Bytes skipped because they were outside any frame.
    std::uint64_t skipped_bytes() const noexcept { return skipped_; }
    /// True while a frame has started and not yet ended, and while the rest of an oversized
    /// frame is being dropped (up to the next `0x0B`).
    bool in_frame() const noexcept { return state_ != state::idle; }
    /// The largest payload accepted.
    std::size_t max_frame() const noexcept { return max_frame_; }
    /// Bytes of an unfinished frame held from earlier chunks.
    std::size_t buffered() const noexcept { return partial_.size(); }
    /// Memory held for them: the capacity of the internal buffer, for a caller that budgets
    /// memory (it grows geometrically, so it may be up to twice buffered()).
    std::size_t capacity() const noexcept { return partial_.capacity(); }

private:
    enum class state : std::uint8_t { idle, in_frame, discarding };
    static constexpr std::size_t retained_capacity = std::size_t{64} << 10;

    void release() noexcept;

    std::size_t max_frame_;
    state state_ = state::idle;
    bool after_end_ = false;        // the last frame ended at 0x1C; a 0x0D may follow
    std::string_view input_;        // unconsumed rest of the current chunk
    std::string partial_;           // payload bytes of the current frame from earlier chunks
    std::uint64_t skipped_ = 0;
};

} // namespace hl7::mllp
