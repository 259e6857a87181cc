// The seed example with completion handlers instead of coroutines: both messages are sent at
// once, each on its own connection, and the connections are closed once both have answered.
//
//     callback HOST ADT_PORT ORU_PORT [SAMPLES_DIR]
#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>

#include <boost/asio/io_context.hpp>

#include <chrono>
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

} // namespace

int main(int argc, char** argv)
{
    if (argc < 4 || argc > 5) {
        std::cerr << "usage: callback HOST ADT_PORT ORU_PORT [SAMPLES_DIR]\n";
        return 2;
    }
    try {
        const std::string samples = argc == 5 ? argv[4] : "samples";
        asio::io_context ctx;
        hl7::connection_options options;
        options.connect_timeout = 5s;
        options.ack_timeout = 10s;
        options.reconnect.max_attempts = 3;
        auto client = hl7::client::create(ctx.get_executor(), {.host = argv[1], .defaults = options});
        if (!client) {
            std::cerr << "callback: " << argv[1] << ": " << client.error().message() << '\n';
            return 2;
        }
        auto adt = client.value().connect(std::stoi(argv[2]));
        auto oru = client.value().connect(std::stoi(argv[3]));
        if (!adt || !oru) {
            std::cerr << "callback: " << (adt ? oru.error() : adt.error()).message() << '\n';
            return 2;
        }

        // Everything below runs on ctx's one thread: no locking needed.
        int answered = 0, accepted = 0;
        auto on_ack = [&](const char* feed, std::string control_id) {
            return [&, feed, control_id](boost::system::error_code ec, hl7::ack ack) {
                std::cout << feed << ' ' << control_id << ": ";
                if (ec) {
                    std::cout << "failed: " << ec.message() << '\n';
                } else if (ack.accepted()) {
                    std::cout << to_string(ack.code()) << " (accepted)\n";
                    ++accepted;
                } else {
                    std::cout << to_string(ack.code()) << " (not accepted)\n";
                }
                if (++answered == 2) {
                    // Both answered: close both; the io_context runs out of work afterwards.
                    adt.value().async_close([] {});
                    oru.value().async_close([] {});
                }
            };
        };
        hl7::message admission = load(samples + "/adt_a01.hl7");
        hl7::message results = load(samples + "/oru_r01.hl7");
        const std::string adt_id(admission.control_id());
        const std::string oru_id(results.control_id());
        adt.value().async_send(std::move(admission), on_ack("ADT", adt_id));
        oru.value().async_send(std::move(results), on_ack("ORU", oru_id));
        ctx.run();
        return accepted == 2 ? 0 : 1;
    } catch (const std::exception& e) {
        std::cerr << "callback: " << e.what() << '\n';
        return 1;
    }
}
