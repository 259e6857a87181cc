// A loopback MLLP peer for the client's integration tests, scripted to behave or misbehave:
// each accepted connection runs a coroutine the test gives, with helpers to read frames and
// write raw bytes (ACKs, stray frames, garbage, one byte at a time...).
#pragma once

#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>
#include <hl7/model/mllp.hpp>

#include "support/async_util.hpp"

#include <doctest/doctest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hl7::test {

namespace asio = boost::asio;

/// One accepted connection of a peer.
class peer_link {
public:
    explicit peer_link(asio::ip::tcp::socket s) : socket(std::move(s)) {}

    /// The next frame's payload; nullopt once the client closed or reset the connection.
    asio::awaitable<std::optional<std::string>> read_frame()
    {
        for (;;) {
            if (auto frame = decoder.next()) {
                if (*frame)
                    co_return std::string(frame->value());
                continue;
            }
            auto [ec, n] = co_await socket.async_read_some(asio::buffer(buffer), asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return std::nullopt;
            chunk.assign(buffer.data(), n);
            decoder.feed(chunk);
        }
    }

    /// The next message (which must parse); nullopt once the client closed.
    asio::awaitable<std::optional<message>> read_message()
    {
        auto frame = co_await read_frame();
        if (!frame)
            co_return std::nullopt;
        auto m = message::parse(*frame);
        REQUIRE(m.has_value());
        received->push_back(std::string(m.value().get("MSH.10").value().raw()));
        co_return std::move(m).value();
    }

    /// Writes raw bytes; false if the client is gone.
    asio::awaitable<bool> write(std::string_view bytes)
    {
        auto [ec, n] = co_await asio::async_write(socket, asio::buffer(bytes.data(), bytes.size()),
                                                  asio::as_tuple(asio::use_awaitable));
        co_return !ec;
    }

    /// Writes raw bytes one byte per write.
    asio::awaitable<bool> write_bytewise(std::string_view bytes)
    {
        for (char c : bytes)
            if (!co_await write(std::string_view(&c, 1)))
                co_return false;
        co_return true;
    }

    /// Answers `m` with a generated ACK.
    asio::awaitable<bool> reply(const message& m, verdict code = verdict::accept)
    {
        // Named, not a temporary: GCC 12 mishandles temporaries that live across a co_await.
        const std::string ack = ack_bytes(m, code);
        co_return co_await write(ack);
    }

    /// The framed ACK of `m`.
    static std::string ack_bytes(const message& m, verdict code = verdict::accept, ack_options options = {})
    {
        return mllp::encode(make_ack(m, code, options).value().str());
    }

    /// A framed ACK whose MSA-2 is `control_id`, whatever was sent.
    static std::string ack_bytes_for(std::string_view control_id, std::string_view code = "AA")
    {
        return mllp::encode("MSH|^~\\&|PEER|F|CLIENT|F|20240101||ACK^A01^ACK|P" + std::string(control_id) +
                            "|P|2.5.1\rMSA|" + std::string(code) + "|" + std::string(control_id) + "\r");
    }

    /// Reads, ignoring everything, until the client closes.
    asio::awaitable<void> drain()
    {
        for (;;) {
            auto frame = co_await read_frame();
            if (!frame)
                co_return;
        }
    }

    /// Answers messages with AA, each after `delay_ms`, until the client closes. (Not a
    /// duration: GCC 12 mishandles class temporaries, default arguments included, that live
    /// across a co_await.)
    asio::awaitable<void> serve(int delay_ms = 0)
    {
        while (auto m = co_await read_message()) {
            if (delay_ms > 0)
                co_await sleep_for(std::chrono::milliseconds(delay_ms));
            if (!co_await reply(*m))
                co_return;
        }
    }

    void close()
    {
        boost::system::error_code ignored;
        socket.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
        socket.close(ignored);
    }

    asio::ip::tcp::socket socket;
    mllp::decoder decoder;
    std::array<char, 4096> buffer{};
    std::string chunk;
    std::shared_ptr<std::vector<std::string>> received;
};

/// A listening peer on a loopback address. Its script runs once per accepted connection,
/// with the connection's index (0 for the first).
class peer {
public:
    using script = std::function<asio::awaitable<void>(peer_link&, std::size_t index)>;

    peer(asio::any_io_executor ex, script s, const std::string& host = "127.0.0.1", std::uint16_t port = 0)
        : state_(std::make_shared<shared>(ex, std::move(s)))
    {
        const asio::ip::tcp::endpoint at(asio::ip::make_address(host), port);
        state_->acceptor.open(at.protocol());
        state_->acceptor.set_option(asio::ip::tcp::acceptor::reuse_address(true));
        if (at.address().is_v6())
            state_->acceptor.set_option(asio::ip::v6_only(true));
        state_->acceptor.bind(at);
        state_->acceptor.listen();
        asio::co_spawn(ex, accept(state_), asio::detached);
    }

    peer(const peer&) = delete;
    ~peer() { stop(); }

    std::uint16_t port() const { return state_->acceptor.local_endpoint().port(); }

    /// Connections accepted so far.
    std::size_t accepted() const { return state_->accepted; }

    /// MSH-10 of every message read with read_message, in order, over all connections.
    const std::vector<std::string>& received() const { return *state_->received; }

    /// Stops listening and closes every connection.
    void stop()
    {
        boost::system::error_code ignored;
        state_->acceptor.close(ignored);
        for (auto& weak : state_->links)
            if (auto link = weak.lock())
                link->close();
    }

private:
    struct shared {
        shared(asio::any_io_executor ex, script s) : acceptor(ex), run(std::move(s)) {}
        asio::ip::tcp::acceptor acceptor;
        script run;
        std::size_t accepted = 0;
        std::vector<std::weak_ptr<peer_link>> links;
        std::shared_ptr<std::vector<std::string>> received = std::make_shared<std::vector<std::string>>();
    };

    static asio::awaitable<void> accept(std::shared_ptr<shared> s)
    {
        for (;;) {
            auto [ec, socket] = co_await s->acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return;
            auto link = std::make_shared<peer_link>(std::move(socket));
            link->received = s->received;
            s->links.push_back(link);
            const std::size_t index = s->accepted++;
            asio::co_spawn(s->acceptor.get_executor(), [s, link, index]() -> asio::awaitable<void> {
                co_await s->run(*link, index);
            }, asio::detached);
        }
    }

    std::shared_ptr<shared> state_;
};

/// A script that reads `batch` messages before answering any, then answers them last first
/// (AA), and again, until the client closes: only a sender with that many messages in flight
/// gets answers, and only one that matches each ACK by its MSA-2 gets them right.
inline peer::script answer_in_batches(std::size_t batch)
{
    return [batch](peer_link& link, std::size_t) -> asio::awaitable<void> {
        for (;;) {
            std::vector<message> held;
            while (held.size() < batch) {
                auto m = co_await link.read_message();
                if (!m)
                    co_return;
                held.push_back(std::move(*m));
            }
            std::string replies;
            for (auto it = held.rbegin(); it != held.rend(); ++it)
                replies += peer_link::ack_bytes(*it);
            if (!co_await link.write(replies))
                co_return;
        }
    };
}

/// Whether this machine has an IPv6 loopback (::1) to listen on; for doctest's skip decorator,
/// so that a test that cannot run here reports itself skipped.
inline bool has_ipv6_loopback()
{
    asio::io_context ctx;
    asio::ip::tcp::acceptor a(ctx);
    boost::system::error_code ec;
    a.open(asio::ip::tcp::v6(), ec);
    if (!ec)
        a.bind(asio::ip::tcp::endpoint(asio::ip::make_address("::1"), 0), ec);
    return !ec;
}

/// A loopback port where nothing listens: connecting to it is refused.
inline std::uint16_t closed_port(asio::any_io_executor ex)
{
    asio::ip::tcp::acceptor a(ex, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    return a.local_endpoint().port();
}

} // namespace hl7::test
