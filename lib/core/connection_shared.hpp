// What a connection's strand shares with other threads: its counters (also summed by its
// client) and its status (the last failure, the peer's address), both readable from any
// thread while the strand updates them.
#pragma once

#include <hl7/net/client.hpp>

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>

namespace hl7::detail {

/// Atomics: they change with every message.
struct counter_block {
    std::atomic<std::uint64_t> sent{0}, acknowledged{0}, rejected{0}, timed_out{0}, failed{0}, reconnects{0},
        queued{0}, discarded{0};

    connection_counters snapshot() const noexcept;
};

/// Adds `more` to `total`, member by member.
void add(connection_counters& total, const connection_counters& more) noexcept;

/// Behind a mutex: it changes only when a link comes or goes, or an attempt fails.
class status_block {
public:
    connection_diagnostics diagnostics() const
    {
        std::lock_guard lock(mutex_);
        return diagnostics_;
    }
    std::optional<boost::asio::ip::tcp::endpoint> remote() const
    {
        std::lock_guard lock(mutex_);
        return remote_;
    }

    void failure(boost::system::error_code ec, std::uint32_t attempts, std::chrono::steady_clock::time_point at)
    {
        std::lock_guard lock(mutex_);
        diagnostics_ = {ec, attempts, at};
    }
    void remote(std::optional<boost::asio::ip::tcp::endpoint> peer)
    {
        std::lock_guard lock(mutex_);
        remote_ = peer;
    }

private:
    mutable std::mutex mutex_;
    connection_diagnostics diagnostics_{};
    std::optional<boost::asio::ip::tcp::endpoint> remote_;
};

} // namespace hl7::detail
