// How the sending commands report each message: one line per message, as text or JSON, and a
// progress line on a terminal.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace hl7::tool {

/// The outcome of one message of the input.
struct result {
    std::size_t index = 0;
    std::optional<std::string> control_id;
    std::optional<std::string> ack_code;
    std::optional<std::string> ack_control_id;
    std::optional<std::chrono::microseconds> round_trip;
    std::string error; // empty: none
    bool accepted = false;
};

/// `<n> <MSH-10> <MSA-1> <MSA-2> <round trip ms>`, then the error if any; "-" for what is
/// absent; ended by a newline.
std::string text_line(const result& r);

/// The same as one JSON object (index, control_id, ack_code, ack_control_id, rtt_us, error),
/// with `extra` (members already written, each starting with a comma) before the closing
/// brace; ended by a newline.
std::string json_line(const result& r, std::string_view extra = {});

/// A progress line on standard error when it is a terminal, once there are more than a few
/// messages: redrawn in place at most ten times a second, cleared at the end. When standard
/// output is the same terminal, result lines are written above it.
class progress {
public:
    progress();

    void tick(std::size_t sent, std::size_t accepted, std::size_t failed);
    /// Writes a result line to standard output (throws failure when it is gone).
    void print(const std::string& line);
    void finish();

private:
    void draw();
    void erase();

    const bool enabled_;
    const bool above_;
    const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point drawn_{};
    std::string text_;
    bool shown_ = false;
};

} // namespace hl7::tool
