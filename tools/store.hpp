// Received messages kept as files, one per message, written so that an acknowledged message is
// on disk whole and can never be overwritten: `hl7 listen --out DIR`.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace hl7::tool {

/// A directory of message files named `<number>-<control id>.hl7`, numbered on from the
/// highest number found in it when opened, so that a restart never reuses a name.
///
/// Thread safety: save() may be called concurrently. It blocks (it syncs to disk): call it
/// off the I/O threads.
class message_store {
public:
    /// Opens `dir`, creating it (and its parents) when missing. Throws failure when that fails.
    explicit message_store(std::filesystem::path dir);
    message_store(const message_store&) = delete;
    message_store& operator=(const message_store&) = delete;
    ~message_store();

    /// Writes `bytes` to a new file and returns its path: first to a temporary file in the
    /// directory, synced to disk, then linked to its final name, which never replaces an
    /// existing file (another number is taken instead), then the directory is synced. When it
    /// returns the file is durable; a crash before leaves at most a `.*.part` temporary file,
    /// never a partial message under a final name. Throws std::system_error on failure.
    std::filesystem::path save(std::string_view control_id, std::string_view bytes);

    /// The file name for message `number` with `control_id`: the number on 6 digits or more,
    /// and the control id's first 64 characters with anything but letters, digits, `-`, `_`
    /// and `.` replaced by `_`.
    static std::string file_name(std::uint64_t number, std::string_view control_id);

    /// The number the next message will get.
    std::uint64_t next_number() const noexcept { return next_.load(); }

private:
    std::filesystem::path dir_;
    int dir_fd_ = -1;
    std::atomic<std::uint64_t> next_{1};
    std::atomic<std::uint64_t> temporaries_{0};
};

} // namespace hl7::tool
