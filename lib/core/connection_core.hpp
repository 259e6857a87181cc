// The I/O-free heart of a connection, composed of small machines: the link's life
// (link_life: connect, back off, give up, close), the send queue (send_queue), the messages
// in flight and the matching of their ACKs (flight_window), the one timer (lazy_timer) and
// the counters. It is stepped by events (a send, a connect result, bytes read, a write
// result, a timer) each stamped with the current time, and answers with typed actions for
// the Asio layer to carry out, in order: connect, write, close the socket, complete a send,
// notify the observer, arm the timer. Nothing here sleeps or touches a socket, so every path
// is tested by stepping it with a made-up clock.
//
// What holds after every step (the fuzz target checks it): every send completes exactly
// once, and never with an ACK before its write completed; at most one write is outstanding;
// at most max_in_flight messages are in flight; the timer is armed no later than the
// earliest deadline; nothing is written once close() was called.
#pragma once

#include "core/connection_action.hpp"
#include "core/flight_window.hpp"
#include "core/lazy_timer.hpp"
#include "core/link_life.hpp"
#include "core/send_queue.hpp"
#include "core/connection_shared.hpp"

#include <hl7/net/client.hpp>
#include <hl7/model/mllp.hpp>

#include <cstdint>
#include <string>
#include <string_view>

namespace hl7::detail {

class connection_core {
public:
    /// `options`, `counters` and `status` must outlive the core.
    connection_core(const connection_options& options, counter_block& counters, status_block& status,
                    std::uint64_t seed);

    // --- inputs ---------------------------------------------------------------------------
    /// Starts connecting: when idle (a lazy connection) or failed; nothing otherwise.
    void start(clock::time_point now);
    /// A new send, with its message's MSH-10.
    void send(send_id id, std::string control_id, clock::time_point now);
    /// The send's cancellation slot fired; `terminal`: the cancellation type includes terminal.
    void cancel(send_id id, bool terminal, clock::time_point now);
    void close(close_mode mode, clock::time_point now);
    /// TLS: the TCP connection of `link` is up and its handshake starts.
    void handshaking(std::uint64_t link, clock::time_point now);
    void connected(std::uint64_t link, const boost::asio::ip::tcp::endpoint& peer, clock::time_point now);
    void connect_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now);
    void written(std::uint64_t link, boost::system::error_code ec, clock::time_point now);
    void received(std::uint64_t link, std::string_view bytes, clock::time_point now);
    void read_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now);
    void timer_fired(clock::time_point now);

    // --- outputs --------------------------------------------------------------------------
    /// Takes the next action to carry out, in order; false when there is none.
    bool next(action& out) { return out_.next(out); }

    connection_state state() const noexcept { return link_.state(); }
    std::size_t queued() const noexcept { return queue_.size(); }
    std::size_t in_flight() const noexcept { return window_.size(); }
    bool writing() const noexcept { return window_.writing(); }
    /// When the timer is armed for; max() when not.
    clock::time_point armed() const noexcept { return timer_.armed(); }
    /// The earliest deadline of anything pending; max() when nothing is.
    clock::time_point earliest_deadline() const noexcept;

private:
    void try_write(clock::time_point now);
    bool on_frame(std::string_view payload, clock::time_point now);
    void answer(flight_window::flight& f, hl7::ack ack);
    void lose(boost::system::error_code why, std::size_t n, boost::system::error_code first, clock::time_point now);
    void gave_up();
    void close_when_done();
    void complete(send_id id, boost::system::error_code ec);
    void complete(send_id id, hl7::ack ack);
    void discard(boost::system::error_code why);
    void rearm();

    const connection_options& options_;
    counter_block& counters_;
    output out_;
    link_life link_;
    send_queue queue_;
    flight_window window_;
    lazy_timer timer_;
    mllp::decoder decoder_;
};

} // namespace hl7::detail
