// What every connection of one server shares with the others: the counters, the budget of
// buffered bytes and the rate limit on observer events. Connections run on strands of their
// own, on any thread, so each of these is safe to use concurrently; none does I/O.
#pragma once

#include <hl7/net/server.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

namespace hl7::detail {

using clock = std::chrono::steady_clock;

/// The counters behind server::counters(), as atomics.
struct server_stats {
    std::atomic<std::uint64_t> connections{0}, received{0}, replied{0}, errors{0}, open{0}, bad_frames{0},
        acks_ignored{0}, bytes_received{0}, bytes_sent{0};
    std::array<std::atomic<std::uint64_t>, 6> replies_by_code{};
    std::array<std::atomic<std::uint64_t>, server_limit_count> limits{};
    std::array<std::atomic<std::uint64_t>, server_histogram::bounds.size() + 1> handler_buckets{};
    std::atomic<std::uint64_t> handler_count{0}, handler_micros{0};

    void hit(server_limit limit) noexcept;
    void add_handler_time(clock::duration d) noexcept;
    server_counters snapshot() const noexcept;
};

/// A budget of bytes shared by connections: each takes what it holds beyond its allowance
/// and gives it back when done. A limit of 0 lets every take succeed (and still counts).
class byte_budget {
public:
    explicit byte_budget(std::size_t limit) noexcept : limit_(limit) {}

    /// Takes `n` bytes; false, taking nothing, when that would pass the limit.
    bool take(std::size_t n) noexcept;
    /// Gives back `n` bytes taken before.
    void give(std::size_t n) noexcept;
    std::size_t used() const noexcept { return used_.load(std::memory_order_relaxed); }
    std::size_t limit() const noexcept { return limit_; }

private:
    const std::size_t limit_;
    std::atomic<std::size_t> used_{0};
};

/// The rate limit on observer events of the kinds server_event calls rate-limited: a token
/// bucket per kind, `burst` deep, refilled with one token per `interval`.
class event_limiter {
public:
    static constexpr std::uint32_t default_burst = 10;
    static constexpr clock::duration default_interval = std::chrono::seconds(1);

    explicit event_limiter(std::uint32_t burst = default_burst, clock::duration interval = default_interval) noexcept;

    /// Whether an event of kind `k` happening at `now` is reported: the number of events of
    /// that kind left out since the last one reported, or nullopt when this one is left out.
    std::optional<std::uint64_t> admit(server_event::kind k, clock::time_point now);

    /// The kinds with events left out since they were last reported, and how many of each;
    /// their counts start again from zero.
    std::vector<std::pair<server_event::kind, std::uint64_t>> take_suppressed();

private:
    struct bucket {
        std::uint32_t tokens;
        clock::time_point refilled{};
        std::uint64_t suppressed = 0;
    };
    static constexpr std::size_t kinds = static_cast<std::size_t>(server_event::kind::accept_failed) + 1;

    const std::uint32_t burst_;
    const clock::duration interval_;
    std::mutex mutex_;
    std::array<bucket, kinds> buckets_;
};

/// All of the above, for one server.
struct server_shared {
    explicit server_shared(std::size_t max_buffered, std::uint32_t event_burst = event_limiter::default_burst) noexcept
        : budget(max_buffered), limiter(event_burst)
    {
    }

    server_stats stats;
    byte_budget budget;
    event_limiter limiter;
};

} // namespace hl7::detail
