// The seed example: one client for a host, two connections to it (an ADT feed and a results
// feed on different ports), one sample message sent on each with a coroutine. Prints each
// acknowledgement and exits 0 when both were accepted (AA or CA).
//
//     seed HOST ADT_PORT ORU_PORT [SAMPLES_DIR]
#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>

#include <chrono>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

hl7::message load(const std::string& file)
{
    std::ifstream in(file, std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    auto parsed = hl7::message::parse(bytes.str());
    if (!in || !parsed)
        throw std::runtime_error("cannot read a message from " + file);
    return std::move(parsed).value();
}

// Prints what became of one message; true when it was accepted.
bool report(const char* feed, const hl7::message& sent, const hl7::outcome::result<hl7::ack>& ack)
{
    std::cout << feed << ' ' << sent.control_id() << ": ";
    if (!ack) {
        std::cout << "failed: " << ack.error().message() << '\n';
        return false;
    }
    const bool accepted = ack.value().accepted();
    std::cout << to_string(ack.value().code()) << (accepted ? " (accepted)" : " (not accepted)") << '\n';
    return accepted;
}

asio::awaitable<int> run(std::string host, int adt_port, int oru_port, std::string samples)
{
    // The executor is named before it is used: GCC 12 destroys twice a class temporary (such as
    // the braced client_options below) that shares a full expression with a co_await, so
    // `hl7::client::create(co_await asio::this_coro::executor, {...})` crashes there.
    auto ex = co_await asio::this_coro::executor;
    hl7::connection_options options;
    options.connect_timeout = 5s;
    options.ack_timeout = 10s;
    options.reconnect.max_attempts = 3;
    auto client = hl7::client::create(ex, {.host = host, .defaults = options});
    if (!client) {
        std::cerr << "seed: " << host << ": " << client.error().message() << '\n';
        co_return 2;
    }
    auto adt = client.value().connect(adt_port);
    auto oru = client.value().connect(oru_port);
    if (!adt || !oru) {
        std::cerr << "seed: " << (adt ? oru.error() : adt.error()).message() << '\n';
        co_return 2;
    }

    const hl7::message admission = load(samples + "/adt_a01.hl7");
    const hl7::message results = load(samples + "/oru_r01.hl7");
    // Each result named, each argument a named value: nothing temporary lives across a co_await.
    const auto adt_ack = co_await adt.value().send(admission);
    const auto oru_ack = co_await oru.value().send(results);
    const bool adt_ok = report("ADT", admission, adt_ack);
    const bool oru_ok = report("ORU", results, oru_ack);

    co_await adt.value().close(); // no reconnect after this
    co_await oru.value().close();
    co_return adt_ok && oru_ok ? 0 : 1;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 4 || argc > 5) {
        std::cerr << "usage: seed HOST ADT_PORT ORU_PORT [SAMPLES_DIR]\n";
        return 2;
    }
    int status = 1;
    try {
        asio::io_context ctx;
        asio::co_spawn(ctx, run(argv[1], std::stoi(argv[2]), std::stoi(argv[3]), argc == 5 ? argv[4] : "samples"),
                       [&status](std::exception_ptr e, int rc) {
                           if (e)
                               std::rethrow_exception(e);
                           status = rc;
                       });
        ctx.run();
    } catch (const std::exception& e) {
        std::cerr << "seed: " << e.what() << '\n';
        return 1;
    }
    return status;
}
