// A program that uses hl7-client from outside the repository: parses a message, builds one,
// acknowledges it, and sends it through the client to the library's server on the loopback.
// Prints what it did; exits 0 when everything worked. Built both through a Meson subproject
// and through pkg-config (see test/consumer/).
#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>
#include <hl7/model/message.hpp>
#include <hl7/net/server.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <exception>
#include <iostream>
#include <string_view>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

asio::awaitable<bool> round_trip(hl7::message msg)
{
    auto ex = co_await asio::this_coro::executor;
    auto server = hl7::server::create(ex, {.host = "127.0.0.1", .port = 0}).value();
    hl7::connection_options options;
    options.ack_timeout = 5s;
    options.reconnect.max_attempts = 3;
    auto client = hl7::client::create(ex, {.host = "127.0.0.1", .defaults = options}).value();
    auto conn = client.connect(server.local_endpoint().port()).value();
    const auto ack = co_await conn.send(std::move(msg));
    co_await conn.close();
    co_await server.async_close(asio::use_awaitable);
    if (!ack) {
        std::cout << "send failed: " << ack.error().message() << '\n';
        co_return false;
    }
    std::cout << "sent over MLLP, acknowledged " << to_string(ack.value().code()) << '\n';
    co_return ack.value().accepted();
}

bool run()
{
    const std::string_view text = "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240101120000||ORU^R01|C1|P|2.5.1\r"
                                  "PID|1||12345^^^HOSP^MR||DOE^JANE\r"
                                  "OBX|1|NM|718-7^Hemoglobin^LN||13.9|g/dL\r";
    auto parsed = hl7::message::parse(text);
    if (!parsed || parsed.value().get("PID.5.2") != "JANE")
        return false;
    std::cout << "parsed " << parsed.value().segment_count() << " segments, patient "
              << parsed.value().get("PID.5.1").value().decoded() << '\n';

    auto built = hl7::message::create({.sending_application = "CONSUMER", .receiving_application = "LAB",
                                       .message_type = "ADT", .trigger_event = "A01", .message_structure = "ADT_A01"});
    if (!built || !built.value().set("PID.5.1", "O'NEIL & SONS"))
        return false;
    auto ack = hl7::make_ack(built.value(), hl7::verdict::accept);
    if (!ack || !hl7::ack::read(ack.value()).value().accepted())
        return false;
    std::cout << "built " << built.value().get("MSH.9").value().raw() << ", acknowledged locally with "
              << ack.value().get("MSA.1").value().raw() << '\n';

    bool sent = false;
    asio::io_context ctx;
    asio::co_spawn(ctx, round_trip(std::move(built).value()), [&sent](std::exception_ptr e, bool ok) {
        if (e)
            std::rethrow_exception(e);
        sent = ok;
    });
    ctx.run_for(20s);
    return sent;
}

} // namespace

int main()
{
    try {
        const bool ok = run();
        std::cout << (ok ? "consumer: ok" : "consumer: FAILED") << '\n';
        return ok ? 0 : 1;
    } catch (const std::exception& e) {
        std::cout << "consumer: " << e.what() << '\n';
        return 1;
    }
}
