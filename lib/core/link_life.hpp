// The life of a connection's link: connecting (resolve, TCP, TLS handshake) under a deadline,
// connected, backing off after a failure, giving up after too many, closing and closed. Each
// link (one connection attempt and the socket it opens) has its own number, so that the late
// reports of an abandoned one are told apart and ignored.
#pragma once

#include "core/connection_action.hpp"
#include "core/backoff.hpp"
#include "core/connection_shared.hpp"

#include <hl7/net/client.hpp>

namespace hl7::detail {

class link_life {
public:
    link_life(const connection_options& options, counter_block& counters, status_block& status, std::uint64_t seed);

    connection_state state() const noexcept { return state_; }
    /// The current link's number.
    std::uint64_t id() const noexcept { return link_; }
    /// Connected, or closing with messages still in flight: the link carries messages.
    bool up() const noexcept { return state_ == connection_state::connected || state_ == connection_state::closing; }
    /// When the attempt in progress times out or the backoff ends; max() otherwise.
    clock::time_point deadline() const noexcept { return deadline_; }

    /// Idle or failed: starts an attempt, with the count of failures reset; false otherwise.
    bool start(clock::time_point now, output& out);
    /// TLS: the TCP connection of `link` is up and its handshake starts; from now the
    /// handshake timeout applies instead of the connect timeout.
    void handshaking(std::uint64_t link, clock::time_point now);
    /// Whether `link` is the attempt in progress, now connected.
    bool connected(std::uint64_t link, const boost::asio::ip::tcp::endpoint& peer, clock::time_point now, output& out);
    /// The attempt `link` failed (a stale report is ignored). Returns true when it gave up.
    [[nodiscard]] bool attempt_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now,
                                      output& out);
    /// The deadline may have passed: the attempt timed out, or the backoff is over. Returns
    /// true when it gave up.
    [[nodiscard]] bool timer_fired(clock::time_point now, output& out);
    /// The link that was up is gone, for `ec`; `idle`: no message was in flight. Returns
    /// true when it gave up (a certificate refused after the handshake is a failed attempt).
    [[nodiscard]] bool lost(boost::system::error_code ec, bool idle, clock::time_point now, output& out);
    /// close() while messages are in flight: they finish first.
    void begin_closing() noexcept { state_ = connection_state::closing; }
    /// Closed for good: the socket, if any, closes.
    void close(output& out);

private:
    void begin(clock::time_point now, output& out);
    void finish(output& out);
    bool retry_or_give_up(boost::system::error_code ec, clock::time_point now, output& out);

    const connection_options& options_;
    counter_block& counters_;
    status_block& status_;
    backoff backoff_;
    connection_state state_ = connection_state::idle;
    std::uint64_t link_ = 0;
    std::uint32_t failures_ = 0;
    std::uint32_t failures_before_connect_ = 0; // restored when the peer refuses our certificate after all
    bool ever_connected_ = false;
    bool handshaking_ = false;
    clock::time_point deadline_ = clock::time_point::max();
    clock::time_point connected_at_{};
};

} // namespace hl7::detail
