#include "core/connection_core.hpp"

#include <boost/asio/error.hpp>

#include <algorithm>
#include <exception>
#include <utility>

namespace hl7::detail {

namespace {

bool refused_certificate(const boost::system::error_code& ec) noexcept
{
    return ec == errc::tls_no_client_certificate || ec == errc::tls_untrusted_certificate ||
           ec == errc::tls_certificate_expired;
}

std::chrono::microseconds since(clock::time_point start, clock::time_point now)
{
    return std::chrono::duration_cast<std::chrono::microseconds>(now - start);
}

} // namespace

connection_core::connection_core(const connection_options& options, counter_block& counters, status_block& status,
                                 std::uint64_t seed)
    : options_(options),
      counters_(counters),
      out_(static_cast<bool>(options.observer)),
      link_(options, counters, status, seed),
      queue_(options.queue_limit, counters),
      window_(options.max_in_flight),
      decoder_(options.max_frame)
{
}

clock::time_point connection_core::earliest_deadline() const noexcept
{
    return std::min({link_.deadline(), window_.deadline(), queue_.deadline()});
}

void connection_core::start(clock::time_point now)
{
    link_.start(now, out_);
    rearm();
}

void connection_core::send(send_id id, std::string control_id, clock::time_point now)
{
    switch (link_.state()) {
    case connection_state::closing:
    case connection_state::closed: complete(id, errc::closed); break;
    case connection_state::failed: complete(id, errc::not_connected); break;
    default:
        if (queue_.full()) {
            complete(id, errc::queue_full);
            break;
        }
        queue_.push(id, std::move(control_id), options_.queue_timeout.count() > 0 ? after(now, options_.queue_timeout)
                                                                                   : clock::time_point::max());
        if (link_.state() == connection_state::idle)
            link_.start(now, out_);
        try_write(now);
    }
    rearm();
}

void connection_core::cancel(send_id id, bool terminal, clock::time_point now)
{
    if (queue_.remove(id)) {
        complete(id, boost::asio::error::operation_aborted);
        try_write(now); // it may have held back a message with the same MSH-10 as one in flight
    } else if (terminal && window_.abandon(id)) {
        // The message is on the wire: its ACK must still be consumed, so the flight stays.
        complete(id, boost::asio::error::operation_aborted);
        close_when_done();
    }
    rearm();
}

void connection_core::close(close_mode mode, clock::time_point now)
{
    (void)now;
    const connection_state s = link_.state();
    if (s == connection_state::closed || (s == connection_state::closing && mode == close_mode::graceful)) {
        if (s == connection_state::closed)
            out_.push(action::closed());
        return;
    }
    queue_.clear([this](send_id id) { complete(id, errc::closed); });
    if (mode == close_mode::immediate) {
        // Written and unanswered: the peer may have the message, so it is in doubt.
        for (const auto& f : window_.take_all())
            if (!f.abandoned)
                complete(f.id, errc::connection_lost);
        link_.close(out_);
    } else if (link_.up() && window_.awaited()) {
        link_.begin_closing(); // the messages in flight get their ACKs or time out first
    } else {
        window_.take_all(); // only abandoned ones, if any: nobody waits for their ACKs
        link_.close(out_);
    }
    rearm();
}

void connection_core::handshaking(std::uint64_t link, clock::time_point now)
{
    link_.handshaking(link, now);
    rearm();
}

void connection_core::connected(std::uint64_t link, const boost::asio::ip::tcp::endpoint& peer, clock::time_point now)
{
    if (link_.connected(link, peer, now, out_)) {
        decoder_ = mllp::decoder(options_.max_frame);
        try_write(now);
    }
    rearm();
}

void connection_core::connect_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now)
{
    if (link_.attempt_failed(link, ec, now, out_))
        gave_up();
    rearm();
}

void connection_core::written(std::uint64_t link, boost::system::error_code ec, clock::time_point now)
{
    if (link != link_.id() || !window_.writing())
        return;
    flight_window::flight& f = window_.wrote();
    if (ec) {
        lose(ec, 0, {}, now);
    } else {
        counters_.sent.fetch_add(1, std::memory_order_relaxed);
        out_.notify(owned_event::sent(f.control_id));
        // An ACK can be read before the write's completion is reported, even when the peer
        // got the whole message; only now, with the whole frame written, may it count.
        if (f.held) {
            hl7::ack held = std::move(*f.held);
            answer(f, std::move(held));
        }
        try_write(now);
    }
    rearm();
}

void connection_core::received(std::uint64_t link, std::string_view bytes, clock::time_point now)
{
    if (link != link_.id() || !link_.up())
        return;
    decoder_.feed(bytes);
    while (auto frame = decoder_.next()) {
        if (*frame) {
            if (!on_frame(frame->value(), now))
                break; // the link was reset; what is left of the bytes belongs to it
            continue;
        }
        const boost::system::error_code ec = frame->error();
        if (ec == errc::frame_too_large && !window_.empty()) {
            // The reply was dropped unread: fail the message rather than wait for a timeout.
            lose(ec, 1, ec, now);
            break;
        }
        discard(ec);
    }
    // Writing the next message only now, after every frame of these bytes was handled,
    // keeps a stray frame that came with the last ACK from answering the next message.
    try_write(now);
    rearm();
}

void connection_core::read_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now)
{
    if (link != link_.id() || !link_.up())
        return;
    if (refused_certificate(ec))
        lose(ec, window_.size(), ec, now); // the reason the messages failed
    else
        lose(ec, 0, {}, now);
    rearm();
}

void connection_core::timer_fired(clock::time_point now)
{
    timer_.fired();
    if (link_.timer_fired(now, out_))
        gave_up();
    if (const std::size_t n = window_.expired(now); n > 0) {
        for (std::size_t i = 0; i < n; ++i)
            out_.notify(owned_event::timed_out(window_.flights()[i].control_id));
        // Reset the link so that a late ACK can never be read as the answer to the next message.
        lose(errc::ack_timeout, n, errc::ack_timeout, now);
    }
    queue_.expire(now, [this](send_id id) { complete(id, errc::queue_timeout); });
    rearm();
}

// ---------------------------------------------------------------------------------------

void connection_core::try_write(clock::time_point now)
{
    if (link_.state() != connection_state::connected || window_.writing() || window_.full() || queue_.empty())
        return;
    // Two messages with one MSH-10 in flight at once could not be told apart by their ACKs.
    if (window_.holds(queue_.front().control_id))
        return;
    send_queue::entry e = queue_.pop();
    window_.start(e.id, std::move(e.control_id), now, after(now, options_.ack_timeout));
    out_.push(action::write(link_.id(), e.id));
}

// Returns false when the frame made the link reset.
bool connection_core::on_frame(std::string_view payload, clock::time_point now)
{
    std::string hooked;
    std::string_view text = payload;
    if (options_.receive_hook) {
        try {
            hooked = options_.receive_hook(payload);
        } catch (...) {
            if (window_.empty()) {
                discard(errc::hook_failed);
                return true;
            }
            lose(errc::hook_failed, 1, errc::hook_failed, now); // the reply cannot be read
            return false;
        }
        text = hooked;
    }
    if (window_.empty()) {
        discard({});
        return true;
    }
    // Read with the oldest message's round trip: the peer answers in order, nearly always.
    auto parsed = message::parse(text);
    auto reply = parsed ? ack::read(std::move(parsed).value(), since(window_.oldest().started, now))
                        : outcome::result<ack>(errc::invalid_ack);
    if (!reply) {
        lose(errc::invalid_ack, 1, errc::invalid_ack, now);
        return false;
    }
    flight_window::flight* f = window_.find(reply.value().control_id());
    if (!f) {
        if (window_.recently_finished(reply.value().control_id())) {
            discard({}); // a late or repeated ACK of an earlier message
            return true;
        }
        lose(errc::ack_mismatch, 1, errc::ack_mismatch, now);
        return false;
    }
    if (f->held) {
        discard({}); // a repeat of an ACK held until its write completes
        return true;
    }
    hl7::ack a = std::move(reply).value();
    if (f != &window_.oldest())
        a = ack::read(hl7::message(a.message()), since(f->started, now)).value();
    if (!f->written)
        f->held = std::move(a);
    else
        answer(*f, std::move(a));
    return true;
}

void connection_core::answer(flight_window::flight& f, hl7::ack ack)
{
    out_.notify(owned_event::acknowledged(f.control_id, ack.code(), ack.round_trip()));
    const flight_window::flight done = window_.take(f);
    if (!done.abandoned)
        complete(done.id, std::move(ack));
    close_when_done();
}

// The link is gone, for `why`: every message in flight fails, the first `n` with `first` and
// the others with connection_lost, or with the reason when our certificate was refused; then
// the link reconnects, gives up or, when closing, closes.
void connection_core::lose(boost::system::error_code why, std::size_t n, boost::system::error_code first,
                           clock::time_point now)
{
    const bool idle = window_.empty();
    std::size_t i = 0;
    for (const auto& f : window_.take_all()) {
        if (!f.abandoned)
            complete(f.id, i < n ? first : make_error_code(errc::connection_lost));
        ++i;
    }
    if (link_.lost(why, idle, now, out_))
        gave_up();
}

void connection_core::gave_up()
{
    queue_.clear([this](send_id id) { complete(id, errc::not_connected); });
}

void connection_core::close_when_done()
{
    if (link_.state() == connection_state::closing && !window_.awaited()) {
        window_.take_all();
        link_.close(out_);
    }
}

// Each send is counted once, by how it completed: acknowledged, rejected, timed out or failed.
void connection_core::complete(send_id id, boost::system::error_code ec)
{
    (ec == errc::ack_timeout ? counters_.timed_out : counters_.failed).fetch_add(1, std::memory_order_relaxed);
    out_.push(action::complete(id, ec));
}

void connection_core::complete(send_id id, hl7::ack ack)
{
    (ack.accepted() ? counters_.acknowledged : counters_.rejected).fetch_add(1, std::memory_order_relaxed);
    out_.push(action::complete(id, std::move(ack)));
}

void connection_core::discard(boost::system::error_code why)
{
    counters_.discarded.fetch_add(1, std::memory_order_relaxed);
    out_.notify(owned_event::discarded(why));
}

void connection_core::rearm()
{
    const connection_state s = link_.state();
    if (s == connection_state::closed || s == connection_state::failed)
        timer_.release(out_);
    else
        timer_.want(earliest_deadline(), out_);
}

} // namespace hl7::detail
