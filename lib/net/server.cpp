// The Asio side of the server: the acceptor, which admits or refuses each connection, and
// for each connection a transport, a timer and a session_core whose actions it carries out.
// A connection's work runs on its strand, the acceptor's on another.
#include <hl7/net/server.hpp>

#include "core/admission.hpp"
#include "core/server_shared.hpp"
#include "core/session_core.hpp"
#include "net/session.hpp"
#include "net/strand.hpp"
#include "net/tls.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <exception>
#include <list>
#include <utility>
#include <vector>

namespace hl7 {

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;
using kind = server_event::kind;

namespace detail {
class server_connection;
}

struct server::impl : std::enable_shared_from_this<server::impl> {
    impl(executor_type e, server_options o, std::shared_ptr<asio::ssl::context> t, std::vector<detail::network> allowed)
        : ex(std::move(e)), strand(asio::make_strand(ex)), acceptor(strand), accept_pause(strand), report_timer(strand),
          options(std::move(o)), config(detail::session_config::from(options)), tls(std::move(t)),
          shared(options.max_buffered),
          admission({options.max_connections, options.max_per_source, tls ? options.max_handshakes : 0},
                    std::move(allowed))
    {
    }

    void accept();
    void accepted(error_code ec, tcp::socket socket);
    void admit(tcp::socket socket);
    void ended(std::list<std::weak_ptr<detail::server_connection>>::iterator it, const tcp::endpoint& peer);
    void handshake_ended();
    void stop(asio::any_completion_handler<void()> handler);
    void finish_if_stopped();
    void report(server_event e) noexcept;
    void report_suppressed();

    const executor_type ex;
    const asio::strand<executor_type> strand; // the acceptor's
    tcp::acceptor acceptor;
    asio::steady_timer accept_pause;
    asio::steady_timer report_timer; // reports the counts of events left out, once a second
    tcp::endpoint endpoint;
    const server_options options;
    const detail::session_config config;
    const std::shared_ptr<asio::ssl::context> tls; // null: plaintext
    detail::server_shared shared;

    // On `strand` only.
    detail::admission admission;
    bool stopping = false;
    bool accepting = false; // an accept is outstanding
    bool pausing = false;   // after a failed accept
    bool accept_failing = false;
    // Weak: a connection is kept alive by the operations it has outstanding (and keeps the
    // server alive), never by this list, so that nothing is left in a cycle when the
    // execution context is destroyed with connections open.
    std::list<std::weak_ptr<detail::server_connection>> connections;
    std::vector<asio::any_completion_handler<void()>> waiting;
};

namespace detail {

namespace {

constexpr std::size_t read_size = 16 * 1024;

clock::time_point now() noexcept
{
    return clock::now();
}

} // namespace

// One accepted connection. The core decides; this carries out its actions. Every operation
// it starts holds the connection alive until it completes, and the core asks for `done`
// only once none is outstanding.
class server_connection : public std::enable_shared_from_this<server_connection> {
public:
    server_connection(std::shared_ptr<server::impl> server, tcp::socket socket, tcp::endpoint peer)
        : strand(socket.get_executor()), server_(std::move(server)),
          transport_(std::move(socket), server_->tls.get(), read_size), timer_(strand), peer_(std::move(peer))
    {
        transport_.connected();
    }

    void start()
    {
        step([&] { core_.emplace(server_->config, server_->shared, peer_, now()); });
    }

    void stop()
    {
        step([&] { core_->stop(now()); });
    }

    const asio::any_io_executor strand;
    std::list<std::weak_ptr<server_connection>>::iterator position;

private:
    // Steps the core with `input`, then carries out what it asks. An exception (out of
    // memory, say) ends the connection, reported; the core is not stepped again, and the
    // operations still outstanding only drain.
    template <class Input>
    void step(Input&& input)
    {
        if (failed_)
            return;
        try {
            input();
            run();
        } catch (const std::exception& e) {
            fail(e.what());
        } catch (...) {
            fail("unknown exception");
        }
    }

    void run()
    {
        // Carried out by the outermost call only: an action that completes at once (a reply
        // written at once, a handler that returns without suspending) steps the core again
        // from inside this loop, and its actions join the queue rather than the stack.
        if (running_)
            return;
        running_ = true;
        struct reset {
            bool& flag;
            ~reset() { flag = false; }
        } guard{running_};
        session_action a;
        while (core_->next(a)) {
            using k = session_action::kind;
            switch (a.what()) {
            case k::handshake: handshake(); break;
            case k::read: read(); break;
            case k::handle: handle(a.message()); break;
            case k::write: write(a.bytes()); break;
            case k::close:
                transport_.close();
                break;
            case k::notify: notify(a.event()); break;
            case k::arm_timer: arm(a.deadline()); break;
            case k::done: end(); break;
            }
        }
    }

    void handshake()
    {
        ++outstanding_;
        transport_.async_handshake(asio::ssl::stream_base::server, [self = shared_from_this()](error_code ec) {
            --self->outstanding_;
            self->release_handshake_slot();
            if (ec)
                self->step([&] { self->core_->handshake_failed(ec, now()); });
            else
                self->step([&] {
                    self->core_->handshake_done(peer_certificate_names(self->transport_.native_handle()), now());
                });
            self->drained();
        });
    }

    void read()
    {
        ++outstanding_;
        transport_.async_read_some([self = shared_from_this()](error_code ec, std::string_view bytes) {
            --self->outstanding_;
            if (ec)
                self->step([&] { self->core_->read_failed(ec, now()); });
            else
                self->step([&] { self->core_->received(bytes, now()); });
            self->drained();
        });
    }

    void write(std::string_view bytes)
    {
        if (transport_.start_write(bytes)) {
            core_->written({}, now());
            return;
        }
        ++outstanding_;
        transport_.async_finish_write([self = shared_from_this()](error_code ec) {
            --self->outstanding_;
            self->step([&] { self->core_->written(ec, now()); });
            self->drained();
        });
    }

    // The handler runs in one coroutine per connection, started by the first message and
    // resumed for each one after: a coroutine spawned per message would cost a trip through
    // the scheduler each time.
    void handle(const message& m)
    {
        ++outstanding_;
        in_hand_ = &m;
        if (!resume_handler()) // not started yet
            asio::co_spawn(strand, run_handler(weak_from_this()), asio::detached);
    }

    // Resumes the handler's coroutine when it waits for a message; false when it does not.
    bool resume_handler()
    {
        if (!waiting_)
            return false;
        auto resume = std::move(*waiting_); // moved out by construction: never move-assigned
        waiting_.reset();
        std::move(resume)();
        return true;
    }

    // Suspends the handler's coroutine until handle() or end() resumes it.
    static asio::awaitable<void> next_message(server_connection* c)
    {
        return asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
            [c](auto handler) { c->waiting_.emplace(std::move(handler)); }, asio::use_awaitable);
    }

    // Runs the handler on each message handed out and gives its result, or what it threw, to
    // the core. Between messages it holds the connection weakly: the connection holds it,
    // suspended, and is kept alive meanwhile by the read or write it has outstanding (a
    // connection with nothing outstanding has ended, which resumes this to finish).
    static asio::awaitable<void> run_handler(std::weak_ptr<server_connection> weak)
    {
        for (;;) {
            std::shared_ptr<server_connection> self = weak.lock();
            if (!self || !self->in_hand_)
                co_return; // the connection ended
            const message& m = *std::exchange(self->in_hand_, nullptr);
            // `who` lives in this frame until the handler has finished; the message in the core.
            const peer_info who{self->peer_, self->core_->client_name()};
            std::optional<outcome::result<message>> reply;
            std::string failure;
            try {
                // Named before the co_await: GCC 12 may destroy twice a temporary that lives
                // across one.
                auto running = self->server_->options.handler(m, who);
                auto result = co_await std::move(running);
                reply.emplace(std::move(result));
            } catch (const std::exception& e) {
                failure = e.what();
            } catch (...) {
                failure = "unknown exception";
            }
            --self->outstanding_;
            if (reply)
                self->step([&] { self->core_->handled(std::move(*reply), now()); });
            else
                self->step([&] { self->core_->handler_threw(std::move(failure), now()); });
            self->drained();
            if (self->ended_)
                co_return;
            if (self->in_hand_)
                continue;
            auto waiting = next_message(self.get());
            self.reset();
            co_await std::move(waiting);
        }
    }

    void notify(const owned_server_event& e)
    {
        if (!server_->options.observer)
            return;
        try {
            server_->options.observer(e.view());
        } catch (const std::exception& x) {
            core_->abort(errc::session_failed, std::string("the observer threw: ") + x.what(), now());
        } catch (...) {
            core_->abort(errc::session_failed, "the observer threw", now());
        }
    }

    void arm(clock::time_point deadline)
    {
        if (deadline == clock::time_point::max()) {
            timer_.cancel();
            return;
        }
        timer_.expires_at(deadline);
        timer_.async_wait([self = shared_from_this()](error_code ec) {
            if (!ec)
                self->step([&] { self->core_->timer_fired(now()); });
        });
    }

    // The acceptor counts the connection's TLS handshake as under way from its acceptance
    // until it is over, however that happens.
    void release_handshake_slot()
    {
        if (std::exchange(handshake_slot_, false))
            asio::post(server_->strand, [server = server_] { server->handshake_ended(); });
    }

    void end()
    {
        release_handshake_slot();
        if (std::exchange(ended_, true))
            return;
        resume_handler(); // to finish
        asio::post(server_->strand, [server = server_, it = position, peer = peer_] { server->ended(it, peer); });
    }

    void fail(const char* what) noexcept
    {
        failed_ = true;
        try {
            transport_.close();
            timer_.cancel();
            server_->shared.stats.errors.fetch_add(1, std::memory_order_relaxed);
            server_->report({.what = kind::disconnected, .peer = peer_, .error = errc::session_failed, .detail = what});
        } catch (...) {
        }
        drained();
    }

    // After a failure, the last operation to complete ends the connection.
    void drained() noexcept
    {
        if (failed_ && outstanding_ == 0) {
            try {
                end();
            } catch (...) {
            }
        }
    }

    std::shared_ptr<server::impl> server_;
    detail::session transport_;
    asio::steady_timer timer_;
    tcp::endpoint peer_;
    std::optional<session_core> core_;
    const message* in_hand_ = nullptr; // handed out by the core, not yet taken by the handler's coroutine
    std::optional<asio::any_completion_handler<void()>> waiting_; // the handler's coroutine, between messages
    std::size_t outstanding_ = 0; // operations started and not completed, for failures
    bool handshake_slot_ = server_->tls != nullptr;
    bool running_ = false;
    bool failed_ = false;
    bool ended_ = false;
};

} // namespace detail

// ---------------------------------------------------------------------------------------
// the acceptor

void server::impl::report(server_event e) noexcept
{
    if (!options.observer)
        return;
    try {
        if (detail::rate_limited(e.what)) {
            const auto left_out = shared.limiter.admit(e.what, detail::clock::now());
            if (!left_out)
                return;
            e.suppressed = *left_out;
        }
        options.observer(e);
    } catch (...) {
        // The acceptor goes on whatever the observer does.
    }
}

// Counts of events left out that no later event of their kind reported.
void server::impl::report_suppressed()
{
    if (!options.observer)
        return;
    for (const auto& [what, count] : shared.limiter.take_suppressed()) {
        try {
            options.observer({.what = what, .suppressed = count});
        } catch (...) {
        }
    }
    if (stopping)
        return;
    report_timer.expires_after(detail::event_limiter::default_interval);
    report_timer.async_wait([self = shared_from_this()](error_code ec) {
        if (!ec)
            self->report_suppressed();
    });
}

void server::impl::accept()
{
    if (stopping || accepting || pausing || !admission.may_accept())
        return;
    accepting = true;
    acceptor.async_accept(detail::make_strand(ex), [self = shared_from_this()](error_code ec, tcp::socket socket) {
        self->accepted(ec, std::move(socket));
    });
}

void server::impl::accepted(error_code ec, tcp::socket socket)
{
    accepting = false;
    if (stopping) {
        finish_if_stopped();
        return;
    }
    if (ec) {
        // Out of descriptors or memory, say: pause rather than spin, and say so once.
        if (!std::exchange(accept_failing, true))
            report({.what = kind::accept_failed, .error = ec});
        pausing = true;
        accept_pause.expires_after(std::chrono::milliseconds(100));
        accept_pause.async_wait([self = shared_from_this()](error_code) {
            self->pausing = false;
            self->accept();
        });
        return;
    }
    accept_failing = false;
    try {
        admit(std::move(socket));
    } catch (const std::exception& e) {
        report({.what = kind::accept_failed, .error = errc::session_failed, .detail = e.what()});
    }
    accept();
}

void server::impl::admit(tcp::socket socket)
{
    error_code ec;
    const tcp::endpoint peer = socket.remote_endpoint(ec);
    if (ec)
        return; // gone already
    if (const error_code refused = admission.admit(peer.address())) {
        shared.stats.hit(refused == errc::source_not_allowed     ? server_limit::allowed_sources
                         : refused == errc::too_many_connections ? server_limit::max_connections
                                                                 : server_limit::max_per_source);
        socket.close(ec);
        report({.what = kind::refused, .peer = peer, .error = refused});
        return;
    }
    auto c = std::make_shared<detail::server_connection>(shared_from_this(), std::move(socket), peer);
    c->position = connections.insert(connections.end(), c);
    shared.stats.connections.fetch_add(1, std::memory_order_relaxed);
    shared.stats.open.fetch_add(1, std::memory_order_relaxed);
    if (tls) {
        admission.handshake_started();
        if (!admission.may_accept())
            shared.stats.hit(server_limit::max_handshakes);
    }
    asio::post(c->strand, [c] { c->start(); });
}

void server::impl::ended(std::list<std::weak_ptr<detail::server_connection>>::iterator it, const tcp::endpoint& peer)
{
    connections.erase(it);
    admission.release(peer.address());
    shared.stats.open.fetch_sub(1, std::memory_order_relaxed);
    finish_if_stopped();
}

void server::impl::handshake_ended()
{
    admission.handshake_ended();
    accept();
}

void server::impl::stop(asio::any_completion_handler<void()> handler)
{
    if (handler)
        waiting.push_back(std::move(handler));
    if (!stopping) {
        stopping = true;
        error_code ignored;
        acceptor.close(ignored);
        accept_pause.cancel();
        report_timer.cancel();
        for (const auto& weak : connections)
            if (auto c = weak.lock())
                asio::post(c->strand, [c] { c->stop(); });
    }
    finish_if_stopped();
}

void server::impl::finish_if_stopped()
{
    if (!stopping || accepting || !connections.empty())
        return;
    report_suppressed(); // the last counts, now that no connection can add to them
    for (auto& h : std::exchange(waiting, {}))
        asio::post(ex, std::move(h));
}

// ---------------------------------------------------------------------------------------
// server

outcome::result<server> server::create(executor_type ex, server_options options)
{
    error_code ec;
    const auto address = asio::ip::make_address(options.host, ec);
    if (ec)
        return errc::invalid_host;
    const tcp::endpoint endpoint{address, options.port};
    std::vector<detail::network> allowed;
    for (const std::string& text : options.allowed_sources) {
        auto n = detail::network::parse(text);
        if (!n)
            return n.error();
        allowed.push_back(n.value());
    }
    if (!options.handler) {
        options.handler = [](const message& m, const peer_info&) -> asio::awaitable<outcome::result<message>> {
            co_return make_ack(m, verdict::accept);
        };
    }
    std::shared_ptr<asio::ssl::context> tls;
    if (options.tls) {
        if (!options.tls->allowed_client_names.empty() && options.tls->client_ca_file.empty())
            return errc::tls_setup_failed;
        auto ctx = detail::make_server_context(*options.tls);
        if (!ctx)
            return ctx.error();
        tls = std::move(ctx).value();
    }
    auto i = std::make_shared<impl>(std::move(ex), std::move(options), std::move(tls), std::move(allowed));

    auto& a = i->acceptor;
    a.open(endpoint.protocol(), ec);
    if (!ec)
        detail::close_on_exec(a.native_handle());
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

    asio::dispatch(i->strand, [i] {
        i->accept();
        i->report_suppressed();
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
    return impl_->shared.stats.snapshot();
}

server::executor_type server::get_executor() const noexcept
{
    return impl_->ex;
}

void server::close_impl(const std::shared_ptr<impl>& i, asio::any_completion_handler<void()> handler)
{
    // Never completes inside the initiating call: the handler reaches the strand by post.
    asio::post(i->strand, [i, handler = std::move(handler)]() mutable { i->stop(std::move(handler)); });
}

} // namespace hl7
