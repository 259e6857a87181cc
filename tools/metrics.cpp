#include "metrics.hpp"

#include "output.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include <charconv>
#include <chrono>
#include <cmath>
#include <exception>
#include <set>

namespace hl7::tool {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using namespace std::chrono_literals;

constexpr std::size_t max_open = 16;
constexpr std::size_t max_header = 8 * 1024;
constexpr auto request_deadline = 10s;

void append_number(std::string& out, double v)
{
    if (std::isnan(v)) {
        out += "NaN";
        return;
    }
    if (std::isinf(v)) {
        out += v > 0 ? "+Inf" : "-Inf";
        return;
    }
    // Counters are integers in practice: print them without an exponent or a fraction.
    if (v == std::floor(v) && std::fabs(v) < 1e15) {
        char buf[32];
        const auto r = std::to_chars(buf, buf + sizeof buf, static_cast<long long>(v));
        out.append(buf, r.ptr);
        return;
    }
    // The shortest text that reads back as the same double: bucket bounds read as written
    // (le="0.1", not le="0.10000000000000001").
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

// "HOST:PORT", the host an IP address, IPv6 in brackets.
outcome::result<tcp::endpoint> parse_where(std::string_view where)
{
    std::string_view host, port;
    if (where.starts_with('[')) {
        const auto close = where.find("]:");
        if (close == std::string_view::npos)
            return errc::invalid_host;
        host = where.substr(1, close - 1);
        port = where.substr(close + 2);
    } else {
        const auto colon = where.rfind(':');
        if (colon == std::string_view::npos)
            return errc::invalid_port;
        host = where.substr(0, colon);
        port = where.substr(colon + 1);
    }
    boost::system::error_code ec;
    const auto address = asio::ip::make_address(std::string(host), ec);
    if (ec)
        return errc::invalid_host;
    unsigned value = 0;
    const auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || error != std::errc() || end != port.data() + port.size() || value > 65535)
        return errc::invalid_port;
    return tcp::endpoint(address, static_cast<std::uint16_t>(value));
}

} // namespace

void exposition::family(std::string_view name, std::string_view type, std::string_view help)
{
    text_ += "# HELP ";
    text_ += name;
    text_ += ' ';
    for (const char c : help) {
        if (c == '\\')
            text_ += "\\\\";
        else if (c == '\n')
            text_ += "\\n";
        else
            text_ += c;
    }
    text_ += "\n# TYPE ";
    text_ += name;
    text_ += ' ';
    text_ += type;
    text_ += '\n';
}

void exposition::write_labels(labels l, std::string_view extra_name, std::string_view extra_value)
{
    if (l.size() == 0 && extra_name.empty())
        return;
    text_ += '{';
    bool first = true;
    auto one = [&](std::string_view name, std::string_view value) {
        if (!first)
            text_ += ',';
        first = false;
        text_ += name;
        text_ += "=\"";
        for (const char c : value) {
            if (c == '\\')
                text_ += "\\\\";
            else if (c == '"')
                text_ += "\\\"";
            else if (c == '\n')
                text_ += "\\n";
            else
                text_ += c;
        }
        text_ += '"';
    };
    for (const auto& [name, value] : l)
        one(name, value);
    if (!extra_name.empty())
        one(extra_name, extra_value);
    text_ += '}';
}

void exposition::sample(std::string_view name, double value, labels l)
{
    text_ += name;
    write_labels(l);
    text_ += ' ';
    append_number(text_, value);
    text_ += '\n';
}

void exposition::histogram(std::string_view name, std::string_view help, std::span<const double> bounds,
                           std::span<const std::uint64_t> counts, double sum, labels l)
{
    family(name, "histogram", help);
    const std::string bucket = std::string(name) + "_bucket";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= bounds.size(); ++i) {
        cumulative += i < counts.size() ? counts[i] : 0;
        std::string le;
        if (i < bounds.size())
            append_number(le, bounds[i]);
        else
            le = "+Inf";
        text_ += bucket;
        write_labels(l, "le", le);
        text_ += ' ';
        append_number(text_, static_cast<double>(cumulative));
        text_ += '\n';
    }
    text_ += name;
    text_ += "_sum";
    write_labels(l);
    text_ += ' ';
    append_number(text_, sum);
    text_ += "\n";
    text_ += name;
    text_ += "_count";
    write_labels(l);
    text_ += ' ';
    append_number(text_, static_cast<double>(cumulative));
    text_ += '\n';
}

struct metrics_endpoint::state {
    state(asio::any_io_executor ex, std::function<std::string()> c)
        : strand(asio::make_strand(ex)), acceptor(strand), pause(strand), collect(std::move(c))
    {
    }

    asio::strand<asio::any_io_executor> strand;
    tcp::acceptor acceptor;
    asio::steady_timer pause;
    std::function<std::string()> collect;
    tcp::endpoint endpoint;
    // On the strand only.
    bool stopped = false;
    std::set<std::shared_ptr<beast::tcp_stream>> open;

    http::response<http::string_body> respond(const http::request<http::empty_body>& req)
    {
        http::response<http::string_body> res;
        res.version(req.version());
        res.keep_alive(req.keep_alive());
        res.set(http::field::content_type, "text/plain; charset=utf-8");
        const std::string_view target(req.target().data(), req.target().size());
        if (req.method() != http::verb::get && req.method() != http::verb::head) {
            res.result(http::status::method_not_allowed);
            res.set(http::field::allow, "GET, HEAD");
            res.body() = "method not allowed\n";
        } else if (target.substr(0, target.find('?')) != "/metrics") {
            res.result(http::status::not_found);
            res.body() = "not found: try /metrics\n";
        } else {
            try {
                res.body() = collect();
                res.result(http::status::ok);
                res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
            } catch (const std::exception&) {
                res.result(http::status::internal_server_error);
                res.body() = "metrics unavailable\n";
            }
        }
        res.prepare_payload();
        if (req.method() == http::verb::head)
            res.body().clear();
        return res;
    }

    static asio::awaitable<void> serve(std::shared_ptr<state> s, std::shared_ptr<beast::tcp_stream> stream)
    {
        beast::flat_buffer buffer(max_header);
        for (;;) {
            http::request_parser<http::empty_body> parser;
            parser.header_limit(max_header);
            stream->expires_after(request_deadline);
            auto reading = http::async_read(*stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
            const auto [read_error, read_bytes] = co_await std::move(reading);
            if (read_error)
                break;
            const http::response<http::string_body> res = s->respond(parser.get());
            stream->expires_after(request_deadline);
            auto writing = http::async_write(*stream, res, asio::as_tuple(asio::use_awaitable));
            const auto [write_error, written] = co_await std::move(writing);
            if (write_error || !res.keep_alive())
                break;
        }
        beast::error_code ignored;
        stream->socket().shutdown(tcp::socket::shutdown_send, ignored);
    }

    static asio::awaitable<void> accept_loop(std::shared_ptr<state> s)
    {
        while (!s->stopped) {
            auto accepting = s->acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
            auto [ec, socket] = co_await std::move(accepting);
            if (s->stopped)
                break;
            if (ec) {
                // Out of descriptors, say: pause rather than spin; stop() cancels the pause.
                s->pause.expires_after(100ms);
                auto pausing = s->pause.async_wait(asio::as_tuple(asio::use_awaitable));
                co_await std::move(pausing);
                continue;
            }
            if (s->open.size() >= max_open) {
                boost::system::error_code ignored;
                socket.close(ignored);
                continue;
            }
            auto stream = std::make_shared<beast::tcp_stream>(std::move(socket));
            s->open.insert(stream);
            asio::co_spawn(s->strand, serve(s, stream), [s, stream](std::exception_ptr) { s->open.erase(stream); });
        }
    }
};

outcome::result<metrics_endpoint> metrics_endpoint::start(asio::any_io_executor ex, std::string_view where,
                                                          std::function<std::string()> collect)
{
    auto endpoint = parse_where(where);
    if (!endpoint)
        return endpoint.error();
    auto s = std::make_shared<state>(std::move(ex), std::move(collect));
    boost::system::error_code ec;
    s->acceptor.open(endpoint.value().protocol(), ec);
    if (!ec)
        s->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec)
        s->acceptor.bind(endpoint.value(), ec);
    if (!ec)
        s->acceptor.listen(tcp::acceptor::max_listen_connections, ec);
    if (!ec)
        s->endpoint = s->acceptor.local_endpoint(ec);
    if (ec)
        return ec;
    asio::co_spawn(s->strand, state::accept_loop(s), [](std::exception_ptr) {});
    return metrics_endpoint(std::move(s));
}

metrics_endpoint::metrics_endpoint(std::shared_ptr<state> s) noexcept
    : state_(std::move(s))
{
}

metrics_endpoint::metrics_endpoint(metrics_endpoint&&) noexcept = default;

metrics_endpoint& metrics_endpoint::operator=(metrics_endpoint&& other) noexcept
{
    if (this != &other) {
        stop();
        state_ = std::move(other.state_);
    }
    return *this;
}

metrics_endpoint::~metrics_endpoint()
{
    stop();
}

tcp::endpoint metrics_endpoint::local_endpoint() const
{
    return state_->endpoint;
}

void metrics_endpoint::stop()
{
    if (!state_)
        return;
    asio::post(state_->strand, [s = state_] {
        if (s->stopped)
            return;
        s->stopped = true;
        boost::system::error_code ignored;
        s->acceptor.close(ignored);
        s->pause.cancel();
        for (const auto& stream : s->open)
            stream->socket().close(ignored);
    });
}

metrics_endpoint serve_metrics(asio::any_io_executor ex, const std::string& where, std::function<std::string()> collect)
{
    auto started = metrics_endpoint::start(std::move(ex), where, std::move(collect));
    if (!started)
        throw failure(started.error() == errc::invalid_host || started.error() == errc::invalid_port ? exit_usage
                                                                                                    : exit_failed,
                      "cannot serve metrics at '" + where + "': " + describe(started.error()));
    return std::move(started).value();
}

} // namespace hl7::tool
