// What the server's integration tests play the peer with: a raw client that writes bytes
// exactly as the test gives them (from a chosen local address, if need be) and reads replies
// with the library's decoder, a recorder of the server's events, and a one-shot event between
// coroutines.
#pragma once

#include <hl7/model/message.hpp>
#include <hl7/model/mllp.hpp>
#include <hl7/net/server.hpp>

#include <doctest/doctest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace hl7::test {

namespace asio = boost::asio;

/// A client that writes raw bytes and reads frames.
class raw_client {
public:
    /// Connects to `to`, from `from` when given (another loopback address, say).
    static asio::awaitable<raw_client> connect(asio::ip::tcp::endpoint to,
                                               std::optional<asio::ip::address> from = std::nullopt)
    {
        asio::ip::tcp::socket socket(co_await asio::this_coro::executor);
        if (from) {
            socket.open(to.protocol());
            socket.bind({*from, 0});
        }
        co_await socket.async_connect(to, asio::use_awaitable);
        co_return raw_client(std::move(socket));
    }

    asio::awaitable<void> write(std::string_view bytes)
    {
        co_await asio::async_write(socket_, asio::buffer(bytes), asio::use_awaitable);
    }

    /// Writes, and tells whether the server still took the bytes.
    asio::awaitable<boost::system::error_code> try_write(std::string_view bytes)
    {
        auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(bytes), asio::as_tuple(asio::use_awaitable));
        co_return ec;
    }

    asio::awaitable<void> send(std::string_view payload)
    {
        const std::string frame = mllp::encode(payload); // named: see peer.hpp on GCC 12 and temporaries
        co_await write(frame);
    }

    /// The next frame's payload; fails the test if the connection ends first.
    asio::awaitable<std::string> read_frame()
    {
        while (frames_.empty()) {
            const boost::system::error_code ec = co_await read_more();
            REQUIRE_MESSAGE(!ec, "the connection ended before a frame arrived: " << ec.message());
        }
        std::string f = std::move(frames_.front());
        frames_.pop_front();
        co_return f;
    }

    asio::awaitable<message> read_reply()
    {
        auto m = message::parse(co_await read_frame());
        REQUIRE(m.has_value());
        co_return std::move(m).value();
    }

    /// Reads until the server ends the connection and returns how it ended (eof for a close);
    /// fails the test if a frame arrives instead.
    asio::awaitable<boost::system::error_code> read_end()
    {
        for (;;) {
            const boost::system::error_code ec = co_await read_more();
            REQUIRE(frames_.empty());
            if (ec)
                co_return ec;
        }
    }

    asio::ip::tcp::endpoint local_endpoint() const { return socket_.local_endpoint(); }
    asio::ip::tcp::socket& socket() noexcept { return socket_; }

private:
    explicit raw_client(asio::ip::tcp::socket socket)
        : socket_(std::move(socket))
    {
    }

    asio::awaitable<boost::system::error_code> read_more()
    {
        auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buffer_), asio::as_tuple(asio::use_awaitable));
        if (ec)
            co_return ec;
        decoder_.feed({buffer_.data(), n});
        while (auto f = decoder_.next()) {
            REQUIRE_MESSAGE(f->has_value(), "bad frame from the server: " << f->error().message());
            frames_.emplace_back(f->value());
        }
        co_return boost::system::error_code{};
    }

    asio::ip::tcp::socket socket_;
    mllp::decoder decoder_;
    std::array<char, 4096> buffer_;
    std::deque<std::string> frames_;
};

/// A server event with its text copied.
struct recorded {
    server_event::kind what;
    asio::ip::tcp::endpoint peer;
    std::string control_id;
    boost::system::error_code error;
    std::string detail;
    std::uint64_t suppressed = 0;
};

/// Keeps what the server reports; safe to use from any thread.
class recorder {
public:
    std::function<void(const server_event&)> observer()
    {
        return [this](const server_event& e) {
            std::lock_guard lock(mutex_);
            events_.push_back({e.what, e.peer, std::string(e.control_id), e.error, std::string(e.detail), e.suppressed});
        };
    }

    std::vector<recorded> of(server_event::kind what)
    {
        std::lock_guard lock(mutex_);
        std::vector<recorded> out;
        for (const auto& e : events_)
            if (e.what == what)
                out.push_back(e);
        return out;
    }

    std::vector<recorded> all()
    {
        std::lock_guard lock(mutex_);
        return events_;
    }

private:
    std::mutex mutex_;
    std::vector<recorded> events_;
};

/// A one-shot event between coroutines of a single-threaded io_context: a timer that never
/// expires, cancelled to wake whoever waits.
class event {
public:
    explicit event(asio::any_io_executor ex)
        : timer_(std::move(ex), asio::steady_timer::time_point::max())
    {
    }

    void set()
    {
        set_ = true;
        timer_.cancel();
    }

    asio::awaitable<void> wait()
    {
        if (!set_)
            co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }

private:
    asio::steady_timer timer_;
    bool set_ = false;
};

} // namespace hl7::test
