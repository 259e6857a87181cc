// Parses each sample message, prints a few fields, frames it for MLLP and decodes the
// stream back, checking that every message survives the round trip.
#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>
#include <hl7/model/mllp.hpp>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv)
{
    std::string stream;
    std::vector<std::string> originals;
    for (int i = 1; i < argc; ++i) {
        std::ifstream in(argv[i], std::ios::binary);
        std::ostringstream bytes;
        bytes << in.rdbuf();
        auto msg = hl7::message::parse(bytes.str());
        if (!msg) {
            std::cerr << argv[i] << ": " << msg.error().message() << '\n';
            return 1;
        }
        const hl7::message& m = msg.value();
        std::cout << argv[i] << ": " << m.get("MSH.9").value().raw() << " control id " << m.get("MSH.10").value().raw()
                  << ", " << m.segment_count() << " segments";
        if (auto name = m.get("PID.5.1"); name && name.value().present())
            std::cout << ", patient " << name.value().decoded() << '^' << m.get("PID.5.2").value().decoded();
        if (auto code = m.get("MSA.1"); code && code.value().present())
            std::cout << ", acknowledges " << m.get("MSA.2").value().raw() << " with " << code.value().raw();
        std::cout << '\n';
        stream += hl7::mllp::encode(m.str());
        originals.emplace_back(m.str());
    }

    hl7::mllp::decoder decoder;
    decoder.feed(stream);
    std::size_t n = 0;
    while (auto frame = decoder.next()) {
        if (!*frame) {
            std::cerr << "decode: " << frame->error().message() << '\n';
            return 1;
        }
        if (n >= originals.size() || frame->value() != originals[n]) {
            std::cerr << "frame " << n + 1 << " does not match its message\n";
            return 1;
        }
        ++n;
    }
    std::cout << n << " messages framed into " << stream.size() << " bytes and decoded back intact\n";
    return n == originals.size() ? 0 : 1;
}
