// Reading HL7 messages from files or standard input as a stream: only the message being
// read (and those completed by the last chunk read) are in memory, however long the input.
//
// What is accepted:
//   - segments ended by CR, LF or CRLF;
//   - messages separated by blank lines (empty or only spaces and tabs) or by the next MSH;
//   - MLLP-framed input (0x0B payload 0x1C 0x0D), told apart by its first byte that is not
//     whitespace; each frame is read as above, so a frame may hold a batch;
//   - FHS/BHS batches: each MSH inside is a message; FHS, BHS, BTS and FTS segments end the
//     message before them and are dropped.
// Lines before the first MSH (a segment without a header) make a message of their own, which
// then fails to parse; that is how such input is reported.
#pragma once

#include <hl7/model/mllp.hpp>

#include <cstddef>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hl7::tool {

/// One message of the input, or what made a piece of the input unusable.
struct input_message {
    /// The segments, each ended by CR. Empty when `error` is set.
    std::string text;
    /// Why there is no message here: it was larger than the limit, or an MLLP frame was
    /// malformed or cut short. Empty for a message.
    std::string error;
};

/// Splits one stream of bytes (a file) into messages, without I/O.
class message_splitter {
public:
    /// `max_size`: the largest message (or MLLP frame) kept; a larger one is dropped as it
    /// arrives and reported as an error.
    explicit message_splitter(std::size_t max_size);

    /// Takes the next bytes of the stream; complete messages are queued for next().
    void feed(std::string_view bytes);
    /// The stream ended: whatever is pending becomes the last message.
    void finish();
    /// The next complete message, if any.
    std::optional<input_message> next();

private:
    enum class mode { unknown, text, mllp };

    void feed_text(std::string_view bytes);
    void end_line();
    void end_message();
    void add_to_line(std::string_view bytes);

    std::size_t max_size_;
    mode mode_ = mode::unknown;
    std::unique_ptr<mllp::decoder> decoder_; // in MLLP mode
    std::string line_;                        // the line being read (at most max_size_ + 1 bytes)
    bool line_blank_ = true;                  // the line holds only spaces and tabs so far
    bool line_truncated_ = false;             // the line is longer than line_ holds
    bool after_cr_ = false;                   // the last byte was CR: a LF now ends nothing
    std::string message_;                     // the segments of the message being read
    bool oversized_ = false;                  // the message being read passed max_size_
    std::deque<input_message> ready_;
};

/// Reads the messages of files one after the other ("-" or no file at all: standard input).
/// Reads with read(2), so a message from a pipe is handed out as soon as the blank line or
/// the next MSH that ends it has arrived. Either blocking (next) or without ever blocking on a
/// pipe or a terminal (poll, for a caller that waits for the descriptor itself).
class message_reader {
public:
    /// Checks that every file can be opened; throws failure (usage) naming one that cannot.
    message_reader(std::vector<std::string> files, std::size_t max_size, std::size_t chunk_size = 64 * 1024);
    ~message_reader();
    message_reader(const message_reader&) = delete;
    message_reader& operator=(const message_reader&) = delete;

    /// The next message, or nullopt at the end of the last file. Throws failure when a
    /// file cannot be read.
    std::optional<input_message> next();

    /// The next message if it can be had without waiting. Otherwise nullopt, and `finished`
    /// tells the end of the input from an input that has nothing yet: then wait until fd() is
    /// readable and call again. Regular files never make it wait. Throws as next() does.
    std::optional<input_message> poll(bool& finished);

    /// The descriptor being read (valid after poll() returned nullopt without finishing).
    int fd() const noexcept { return fd_; }

private:
    bool open_next();
    // Reads one chunk into the splitter, or ends the current file.
    void read_chunk();

    void close_current() noexcept;

    std::vector<std::string> files_;
    std::size_t next_file_ = 0;
    std::size_t max_size_;
    std::vector<char> chunk_;
    int fd_ = -1; // the file being read; -1 between files
    bool owns_fd_ = false;
    bool regular_ = false; // a regular file: reading it never waits for long
    std::string name_;
    std::optional<message_splitter> splitter_;
};

} // namespace hl7::tool
