#include <hl7/net/server.hpp>

#include "model/recover.hpp"
#include "net/strand.hpp"
#include "net/session.hpp"
#include "net/tls.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <chrono>
#include <exception>
#include <list>
#include <optional>
#include <utility>
#include <vector>

namespace hl7 {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using kind = server_event::kind;

namespace {

constexpr auto relaxed = std::memory_order_relaxed;

// The session's operations as awaitables. Built outside the coroutines that await them, so
// that no temporary of theirs lives across a co_await (which GCC 12 may destroy twice).
asio::awaitable<std::tuple<error_code>> await_handshake(detail::session& t)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(std::tuple<error_code>)>(
        [&t](auto handler) {
            t.async_handshake(asio::ssl::stream_base::server,
                              [h = std::move(handler)](error_code e) mutable { std::move(h)(std::make_tuple(e)); });
        },
        asio::use_awaitable);
}

asio::awaitable<std::tuple<error_code, std::string_view>> await_read(detail::session& t)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(std::tuple<error_code, std::string_view>)>(
        [&t](auto handler) {
            t.async_read_some([h = std::move(handler)](error_code e, std::string_view b) mutable {
                std::move(h)(std::make_tuple(e, b));
            });
        },
        asio::use_awaitable);
}

asio::awaitable<std::tuple<error_code>> await_write(detail::session& t)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(std::tuple<error_code>)>(
        [&t](auto handler) {
            t.async_finish_write([h = std::move(handler)](error_code e) mutable { std::move(h)(std::make_tuple(e)); });
        },
        asio::use_awaitable);
}

} // namespace

struct server::impl {
    struct session {
        session(tcp::socket s, asio::ssl::context* tls)
            : strand(s.get_executor()), transport(std::move(s), tls, 16 * 1024), peer((transport.connected(), transport.peer()))
        {
        }

        const executor_type strand;
        detail::session transport;
        tcp::endpoint peer;
        // On `strand` only.
        bool stop_requested = false;
        bool reading = false;
    };

    impl(executor_type e, server_options o, std::shared_ptr<asio::ssl::context> t)
        : ex(std::move(e)), strand(asio::make_strand(ex)), acceptor(strand), accept_pause(strand),
          stop_deadline(strand), options(std::move(o)), tls(std::move(t))
    {
    }

    const executor_type ex;
    const asio::strand<executor_type> strand;
    tcp::acceptor acceptor;
    asio::steady_timer accept_pause;
    asio::steady_timer stop_deadline;
    tcp::endpoint endpoint;
    const server_options options;
    const std::shared_ptr<asio::ssl::context> tls; // null: plaintext
    std::atomic<std::uint64_t> connections{0};
    std::atomic<std::uint64_t> received{0};
    std::atomic<std::uint64_t> replied{0};
    std::atomic<std::uint64_t> errors{0};

    // On `strand` only.
    bool stopping = false;
    bool accepting = true;
    std::list<std::shared_ptr<session>> sessions;
    std::vector<asio::any_completion_handler<void()>> waiting;

    void report(const server_event& e) const
    {
        if (options.observer)
            options.observer(e);
    }

    static void stop(const std::shared_ptr<impl>& self, asio::any_completion_handler<void()> handler)
    {
        if (handler)
            self->waiting.push_back(std::move(handler));
        if (!self->stopping) {
            self->stopping = true;
            error_code ignored;
            self->acceptor.close(ignored);
            self->accept_pause.cancel();
            for (const auto& s : self->sessions) {
                // A session busy with a message sees the flag once it has written the reply.
                asio::post(s->strand, [s] {
                    s->stop_requested = true;
                    if (s->reading) {
                        error_code ignored;
                        s->transport.socket().cancel(ignored);
                    }
                });
            }
            self->stop_deadline.expires_after(self->options.close_timeout);
            self->stop_deadline.async_wait([self](error_code ec) {
                if (ec)
                    return; // every connection ended in time
                for (const auto& s : self->sessions)
                    asio::post(s->strand, [s] { s->transport.close(); });
            });
        }
        self->finish_if_stopped();
    }

    void finish_if_stopped()
    {
        if (!stopping || accepting || !sessions.empty())
            return;
        stop_deadline.cancel();
        for (auto& h : std::exchange(waiting, {}))
            asio::post(ex, std::move(h));
    }

    static asio::awaitable<void> accept_loop(std::shared_ptr<impl> self)
    {
        while (!self->stopping) {
            auto [ec, socket] = co_await self->acceptor.async_accept(
                detail::make_strand(self->ex), asio::as_tuple(asio::use_awaitable));
            if (self->stopping)
                break;
            if (ec) {
                // Out of descriptors, say: pause rather than spin; stop() cancels the pause.
                self->accept_pause.expires_after(std::chrono::milliseconds(100));
                co_await self->accept_pause.async_wait(asio::as_tuple(asio::use_awaitable));
                continue;
            }
            self->connections.fetch_add(1, relaxed);
            auto s = std::make_shared<session>(std::move(socket), self->tls.get());
            auto it = self->sessions.insert(self->sessions.end(), s);
            // The completion handler runs even when the session ended by an exception, so
            // the session always leaves the list.
            asio::co_spawn(s->strand, serve(self, s), [self, it](std::exception_ptr) {
                asio::post(self->strand, [self, it] {
                    self->sessions.erase(it);
                    self->finish_if_stopped();
                });
            });
        }
    }

    // The TLS handshake, bounded by its timeout: on expiry the socket is closed under it. The
    // timer's handler may run after this coroutine is gone, so what it touches is shared.
    asio::awaitable<error_code> handshake(std::shared_ptr<session> s)
    {
        struct race {
            bool expired = false;
            bool over = false;
        };
        auto state = std::make_shared<race>();
        asio::steady_timer deadline(s->strand, options.tls->handshake_timeout);
        deadline.async_wait([s, state](error_code ec) {
            if (!ec && !state->over) {
                state->expired = true;
                s->transport.close();
            }
        });
        auto handshaken = await_handshake(s->transport);
        const auto [ec] = co_await std::move(handshaken);
        state->over = true;
        if (state->expired)
            co_return errc::tls_handshake_timeout;
        co_return ec;
    }

    static asio::awaitable<void> serve(std::shared_ptr<impl> self, std::shared_ptr<session> s)
    {
        self->report({.what = kind::accepted, .peer = s->peer});
        if (s->transport.secure()) {
            s->reading = true; // a stop closes the socket under the handshake, as under a read
            const error_code ec = co_await self->handshake(s);
            s->reading = false;
            if (ec) {
                self->errors.fetch_add(1, relaxed);
                self->report({.what = kind::handshake_failed, .peer = s->peer, .error = ec});
                s->transport.close();
                self->report({.what = kind::disconnected, .peer = s->peer, .error = ec});
                co_return;
            }
        }
        mllp::decoder decoder(self->options.max_frame);
        error_code why;
        while (!why) {
            if (s->stop_requested) {
                why = errc::closed;
                break;
            }
            s->reading = true;
            auto read = await_read(s->transport);
            const auto [ec, bytes] = co_await std::move(read);
            s->reading = false;
            if (ec) {
                why = s->stop_requested ? make_error_code(errc::closed) : ec;
                break;
            }
            decoder.feed(bytes);
            // Frames already read are dropped once stopping: only the one in hand is finished.
            while (!why && !s->stop_requested) {
                auto frame = decoder.next();
                if (!frame)
                    break;
                if (*frame) {
                    why = co_await self->answer(*s, frame->value());
                } else {
                    self->errors.fetch_add(1, relaxed);
                    self->report({.what = kind::bad_frame, .peer = s->peer, .error = frame->error()});
                }
            }
        }
        s->transport.close();
        self->report({.what = kind::disconnected, .peer = s->peer, .error = why});
    }

    // Answers one frame; fails only when writing the reply fails.
    asio::awaitable<error_code> answer(session& s, std::string_view frame)
    {
        received.fetch_add(1, relaxed);
        auto parsed = message::parse(frame);
        std::optional<message> header; // of a frame that does not parse
        std::string_view control_id;
        outcome::result<message> reply = errc::not_hl7;
        if (!parsed) {
            errors.fetch_add(1, relaxed);
            header = detail::recover_header(frame);
            control_id = header ? header->control_id() : std::string_view{};
            report({.what = kind::unparsable, .peer = s.peer, .control_id = control_id, .error = parsed.error()});
            if (!header)
                co_return error_code{};
            // 100: the header segment, required first, could not be read.
            const std::string text = parsed.error().message();
            reply = make_ack(*header, verdict::error, {.text = text, .error_code = 100});
        } else {
            const message& msg = parsed.value();
            control_id = msg.control_id();
            report({.what = kind::received, .peer = s.peer, .control_id = control_id});
            std::optional<outcome::result<message>> handled;
            std::string failure;
            try {
                handled = co_await options.handler(msg);
            } catch (const std::exception& e) {
                failure = e.what();
            } catch (...) {
                failure = "unknown exception";
            }
            if (handled && (*handled || handled->error() == errc::no_ack_requested)) {
                reply = std::move(*handled);
            } else {
                if (handled)
                    failure = handled->error().message();
                errors.fetch_add(1, relaxed);
                report({.what = kind::handler_error, .peer = s.peer, .control_id = control_id, .detail = failure});
                reply = make_ack(msg, verdict::error, {.error_code = 207, .error_text = failure});
            }
        }
        // A reply that could not be built (make_ack of a batch without MSH, or of a message that
    // asks for no acknowledgement) is not sent.
        if (!reply)
            co_return error_code{};
        if (!s.transport.start_write(reply.value().str())) {
            auto written = await_write(s.transport);
            const auto [ec] = co_await std::move(written);
            if (ec)
                co_return ec;
        }
        replied.fetch_add(1, relaxed);
        report({.what = kind::replied, .peer = s.peer, .control_id = control_id});
        co_return error_code{};
    }
};

outcome::result<server> server::create(executor_type ex, server_options options)
{
    error_code ec;
    const auto address = asio::ip::make_address(options.host, ec);
    if (ec)
        return errc::invalid_host;
    const tcp::endpoint endpoint{address, options.port};
    if (!options.handler) {
        options.handler = [](const message& m) -> asio::awaitable<outcome::result<message>> {
            co_return make_ack(m, verdict::accept);
        };
    }
    std::shared_ptr<asio::ssl::context> tls;
    if (options.tls) {
        auto ctx = detail::make_server_context(*options.tls);
        if (!ctx)
            return ctx.error();
        tls = std::move(ctx).value();
    }
    auto i = std::make_shared<impl>(std::move(ex), std::move(options), std::move(tls));

    auto& a = i->acceptor;
    a.open(endpoint.protocol(), ec);
    // Without v6_only, "::" would also take IPv4 connections or not depending on the system.
    if (!ec && address.is_v6())
        a.set_option(asio::ip::v6_only(true), ec);
    if (!ec)
        a.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec)
        a.bind(endpoint, ec);
    if (!ec)
        a.listen(tcp::acceptor::max_listen_connections, ec);
    if (!ec)
        i->endpoint = a.local_endpoint(ec);
    if (ec)
        return ec;

    asio::co_spawn(i->strand, impl::accept_loop(i), [i](std::exception_ptr) {
        i->accepting = false;
        i->finish_if_stopped();
    });
    return server{std::move(i)};
}

server::server(std::shared_ptr<impl> i) noexcept
    : impl_(std::move(i))
{
}

server::server(server&&) noexcept = default;

server& server::operator=(server&& other) noexcept
{
    if (this != &other) {
        if (impl_)
            close_impl(impl_, {});
        impl_ = std::move(other.impl_);
    }
    return *this;
}

server::~server()
{
    if (impl_)
        close_impl(impl_, {});
}

tcp::endpoint server::local_endpoint() const
{
    return impl_->endpoint;
}

server_counters server::counters() const noexcept
{
    return {impl_->connections.load(relaxed), impl_->received.load(relaxed), impl_->replied.load(relaxed),
            impl_->errors.load(relaxed)};
}

server::executor_type server::get_executor() const noexcept
{
    return impl_->ex;
}

void server::close_impl(const std::shared_ptr<impl>& i, asio::any_completion_handler<void()> handler)
{
    // Never completes inside the initiating call: the handler reaches the strand by post.
    asio::post(i->strand, [i, handler = std::move(handler)]() mutable { impl::stop(i, std::move(handler)); });
}

} // namespace hl7
