#include "core/link_life.hpp"

#include <boost/asio/error.hpp>

namespace hl7::detail {

link_life::link_life(const connection_options& options, counter_block& counters, status_block& status,
                     std::uint64_t seed)
    : options_(options), counters_(counters), status_(status), backoff_(options.reconnect, seed)
{
}

bool link_life::start(clock::time_point now, output& out)
{
    if (state_ != connection_state::idle && state_ != connection_state::failed)
        return false;
    failures_ = 0;
    begin(now, out);
    return true;
}

void link_life::handshaking(std::uint64_t link, clock::time_point now)
{
    if (link != link_ || state_ != connection_state::connecting || !options_.tls)
        return;
    handshaking_ = true;
    deadline_ = after(now, options_.tls->handshake_timeout);
}

bool link_life::connected(std::uint64_t link, const boost::asio::ip::tcp::endpoint& peer, clock::time_point now,
                          output& out)
{
    if (link != link_ || state_ != connection_state::connecting)
        return false;
    state_ = connection_state::connected;
    deadline_ = clock::time_point::max();
    connected_at_ = now;
    failures_before_connect_ = std::exchange(failures_, 0);
    if (ever_connected_)
        counters_.reconnects.fetch_add(1, std::memory_order_relaxed);
    ever_connected_ = true;
    status_.remote(peer);
    out.notify(owned_event::connected(peer));
    return true;
}

bool link_life::attempt_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now, output& out)
{
    if (link != link_ || state_ != connection_state::connecting)
        return false;
    out.push(action::close_socket(link_));
    return retry_or_give_up(ec, now, out);
}

bool link_life::timer_fired(clock::time_point now, output& out)
{
    if (now < deadline_)
        return false;
    if (state_ == connection_state::connecting) {
        out.push(action::close_socket(link_));
        return retry_or_give_up(handshaking_ ? errc::tls_handshake_timeout : errc::connect_timeout, now, out);
    }
    if (state_ == connection_state::backing_off)
        begin(now, out);
    return false;
}

bool link_life::lost(boost::system::error_code ec, bool idle, clock::time_point now, output& out)
{
    if (!up())
        return false;
    out.push(action::close_socket(link_));
    status_.remote(std::nullopt);
    out.notify(owned_event::disconnected(ec));
    if (state_ == connection_state::closing) {
        finish(out);
        return false;
    }
    ++link_; // whatever the old socket still reports is stale
    // Under TLS 1.3 a server's verdict on our certificate comes after the handshake, with its
    // first records: such a refusal makes the attempt a failed one, as a refusal during the
    // handshake does, so that a connection whose certificate is refused gives up after the
    // maximum attempts.
    if (ec == errc::tls_no_client_certificate || ec == errc::tls_untrusted_certificate ||
        ec == errc::tls_certificate_expired) {
        failures_ = failures_before_connect_;
        return retry_or_give_up(ec, now, out);
    }
    status_.failure(ec, 0, now);
    // A peer that closes an idle link cleanly (an idle timeout, a restart) is reconnected to at
    // once, so that the next message does not wait; unless the link closed soon after it
    // opened, which would make a peer that closes every link at once a busy loop.
    const auto initial = std::chrono::duration_cast<clock::duration>(options_.reconnect.initial);
    if (idle && ec == boost::asio::error::eof && now - connected_at_ >= initial) {
        out.notify(owned_event::reconnect_scheduled(1, {}, ec));
        begin(now, out);
        return false;
    }
    state_ = connection_state::backing_off;
    const clock::duration d = backoff_.delay(0);
    deadline_ = now + d;
    out.notify(owned_event::reconnect_scheduled(1, d, ec));
    return false;
}

void link_life::close(output& out)
{
    if (state_ == connection_state::closed) {
        out.push(action::closed());
        return;
    }
    if (state_ == connection_state::connected || state_ == connection_state::connecting ||
        state_ == connection_state::closing)
        out.push(action::close_socket(link_));
    finish(out);
}

void link_life::finish(output& out)
{
    ++link_;
    state_ = connection_state::closed;
    deadline_ = clock::time_point::max();
    status_.remote(std::nullopt);
    out.notify(owned_event::closed());
    out.push(action::closed());
}

void link_life::begin(clock::time_point now, output& out)
{
    state_ = connection_state::connecting;
    ++link_;
    handshaking_ = false;
    deadline_ = after(now, options_.connect_timeout);
    out.notify(owned_event::connecting(failures_ + 1));
    out.push(action::connect(link_, failures_ + 1));
}

bool link_life::retry_or_give_up(boost::system::error_code ec, clock::time_point now, output& out)
{
    ++failures_;
    status_.failure(ec, failures_, now);
    if (options_.reconnect.max_attempts != 0 && failures_ >= options_.reconnect.max_attempts) {
        state_ = connection_state::failed;
        deadline_ = clock::time_point::max();
        out.notify(owned_event::gave_up(failures_, ec));
        return true;
    }
    state_ = connection_state::backing_off;
    const clock::duration d = backoff_.delay(failures_);
    deadline_ = now + d;
    out.notify(owned_event::reconnect_scheduled(failures_ + 1, d, ec));
    return false;
}

} // namespace hl7::detail
