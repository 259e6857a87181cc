// What every sending command of the hl7 tool shares: the flags that say where and how to
// connect (host, port, timeouts, retries, TLS), turned into the library's options, and the
// io_context thread the connections run on.
#pragma once

#include <hl7/model/mllp.hpp>
#include <hl7/net/client.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <thread>

namespace hl7::tool {

/// The connection flags of a sending command.
struct client_flags {
    std::string host = "127.0.0.1";
    int port = 0;
    double ack_timeout = 10;    ///< seconds
    double connect_timeout = 5; ///< seconds, per attempt (TCP connect and TLS handshake)
    unsigned retries = 3;       ///< consecutive failed connection attempts before giving up
    std::size_t max_frame = mllp::default_max_frame;
    std::size_t window = 1; ///< messages written before their ACKs (connection_options::max_in_flight)
    /// TLS (on when `tls` or any tls_* option is given).
    bool tls = false;
    std::string tls_ca, tls_cert, tls_key, tls_server_name;
    bool tls_insecure = false;

    /// Defines the flags on `command`: --host, --port (required), --ack-timeout,
    /// --connect-timeout, --retries, --max-frame, --window and the --tls-* flags.
    void define(CLI::App& command);

    /// Checks the values (throws failure, usage) and makes the connection options they say.
    connection_options options() const;

    /// `host:port`, as messages name the peer.
    std::string peer() const;
};

/// Seconds as the library's milliseconds, rounded up, with "forever" kept finite.
std::chrono::milliseconds to_ms(double seconds);

/// Runs an io_context on a thread of its own until destroyed.
class io_thread {
public:
    explicit io_thread(boost::asio::io_context& ctx)
        : ctx_(ctx), work_(boost::asio::make_work_guard(ctx)), thread_([&ctx] { ctx.run(); })
    {
    }
    io_thread(const io_thread&) = delete;
    io_thread& operator=(const io_thread&) = delete;
    ~io_thread()
    {
        work_.reset();
        ctx_.stop();
        thread_.join();
    }

private:
    boost::asio::io_context& ctx_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
    std::thread thread_;
};

} // namespace hl7::tool
