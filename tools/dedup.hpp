// `hl7 listen --dedup`: the replies to the last messages acknowledged, by sender and MSH-10,
// so that a message sent again (after a lost acknowledgement, say) is answered with the reply
// it got the first time instead of being processed twice.
#pragma once

#include <hl7/model/message.hpp>

#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace hl7::tool {

/// A window of the last `capacity` messages answered, each keyed by its MSH-3, MSH-4 and
/// MSH-10 (a control id is unique per sending application and facility), with the reply it
/// got. Memory is bounded by the capacity times the size of a key and a reply; the window
/// lives in memory only, so it starts empty on each start.
///
/// Thread safety: every member may be called concurrently.
class dedup_window {
public:
    static constexpr std::size_t default_capacity = 10000;

    explicit dedup_window(std::size_t capacity = default_capacity) : capacity_(capacity) {}

    /// What claim() found.
    struct found {
        enum class state {
            fresh,       ///< not seen: the caller handles it, then calls finish() or abandon()
            in_progress, ///< another connection has the same message in hand right now
            answered,    ///< answered before, with `reply` (nullopt: nothing was sent)
        };
        state what;
        std::optional<message> reply;
    };

    /// The key of `m`, or nullopt when it has no MSH-10.
    static std::optional<std::string> key_of(const message& m);

    /// Looks `key` up, and claims it when fresh.
    found claim(const std::string& key);
    /// `key`, claimed, was answered with `reply`: remembered (the oldest goes beyond capacity).
    void finish(const std::string& key, std::optional<message> reply);
    /// `key`, claimed, could not be handled: forgotten, so that a resend is handled anew.
    void abandon(const std::string& key);

    std::size_t size() const;

private:
    struct entry {
        bool answered = false;
        std::optional<message> reply;
        std::list<std::string>::iterator age;
    };

    const std::size_t capacity_;
    mutable std::mutex mutex_;
    std::unordered_map<std::string, entry> entries_;
    std::list<std::string> order_; // answered keys, oldest first
};

} // namespace hl7::tool
