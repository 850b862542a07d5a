using Vism.Native;
using Vism.VhostUser;

namespace Vism.Fuzz;

/// <summary>
/// vhost-user framing and payloads: a byte stream (see <see cref="SocketFeed"/>) goes through a real
/// socket into <see cref="MessageFramer"/> exactly as the backend session reads it; every message
/// it delivers goes through the payload decoder for its request (and every other decoder). Rules:
/// the framer throws nothing but <see cref="VhostUserProtocolException"/>, decoders never throw,
/// what a decoder accepts re-encodes to the same value, the delivered payload has the announced
/// size, and no received descriptor outlives the framer.
/// </summary>
internal sealed class VhostUserTarget : IFuzzTarget
{
    /// <summary>The session's payload limit (RequestTable.MaxPayload in the vhost-user plugin).</summary>
    private const int MaxPayload = 4096;

    private readonly SocketFeed _feed = new();

    public void Run(ReadOnlySpan<byte> input)
    {
        MessageFramer? framer = null;
        try
        {
            _feed.Feed(input, (socket, closed) =>
            {
                framer ??= new MessageFramer(socket, MaxPayload);
                try
                {
                    while (true)
                    {
                        ReadStatus status = framer.TryRead();
                        if (status == ReadStatus.Message) Decode(framer);
                        else if (status == ReadStatus.Closed) return false;
                        else if (closed) throw new FuzzFinding("TryRead says WouldBlock after the peer closed");
                        else return true;
                    }
                }
                catch (VhostUserProtocolException)
                {
                    return false; // documented: the session closes the connection
                }
            });
        }
        finally
        {
            framer?.Dispose();
        }
        _feed.CheckNoLeak("MessageFramer");
    }

    private static void Decode(MessageFramer framer)
    {
        MessageHeader h = framer.Header;
        ReadOnlySpan<byte> p = framer.Payload;
        if (p.Length != h.Size) throw new FuzzFinding($"payload of {p.Length} bytes for a header announcing {h.Size}");
        if (!h.HasValidVersion) throw new FuzzFinding($"delivered a message with flags 0x{h.Flags:x}");
        if (h.Size > MaxPayload) throw new FuzzFinding($"delivered a payload of {h.Size} bytes over the limit");
        // Every decoder on every payload (the frontend decides the request number, not the payload).
        if (VringState.TryRead(p, out VringState state))
            Same(state.ToBytes(), p, "VringState");
        if (VringAddress.TryRead(p, out VringAddress address))
            Same(address.ToBytes(), p, "VringAddress");
        if (U64Payload.TryRead(p, out ulong u64))
            Same(U64Payload.ToBytes(u64), p, "U64Payload");
        if (ShmemMapPayload.TryRead(p, out ShmemMapPayload map))
        {
            if (!ShmemMapPayload.TryRead(map.ToBytes(), out ShmemMapPayload again) || again != map)
                throw new FuzzFinding("ShmemMapPayload does not survive a round trip");
        }
        if (MemoryRegionDescriptor.TryReadTable(p, out MemoryRegionDescriptor[] table, out string? tableError))
        {
            if (table.Length > VhostUserConstants.MaxMemTableRegions) throw new FuzzFinding($"a table of {table.Length} regions");
            if (!MemoryRegionDescriptor.TryReadTable(MemoryRegionDescriptor.EncodeTable(table), out MemoryRegionDescriptor[] again, out _)
                || !again.AsSpan().SequenceEqual(table))
                throw new FuzzFinding("SET_MEM_TABLE does not survive a round trip");
        }
        else if (string.IsNullOrEmpty(tableError))
        {
            throw new FuzzFinding("SET_MEM_TABLE refused without a reason");
        }
        if (p.Length == MemoryRegionDescriptor.SingleRegionPayloadSize)
        {
            MemoryRegionDescriptor single = MemoryRegionDescriptor.Read(p[8..]);
            if (MemoryRegionDescriptor.Read(single.EncodeSingle().AsSpan(8)) != single)
                throw new FuzzFinding("ADD_MEM_REG does not survive a round trip");
        }
        if (ConfigHeader.TryRead(p, out ConfigHeader config, out string? configError))
        {
            if (config.Length > VhostUserConstants.MaxConfigSize) throw new FuzzFinding($"config of {config.Length} bytes accepted");
            Same(config.Encode(p[ConfigHeader.Size..]), p, "ConfigHeader");
        }
        else if (string.IsNullOrEmpty(configError))
        {
            throw new FuzzFinding("GET/SET_CONFIG refused without a reason");
        }
        if (ShmemConfig.TryRead(p, out ulong[] sizes))
        {
            if (!ShmemConfig.TryRead(ShmemConfig.Encode(sizes), out ulong[] again) || !again.AsSpan().SequenceEqual(sizes))
                throw new FuzzFinding("GET_SHMEM_CONFIG does not survive a round trip");
        }
        // Rebuilding the message gives the same header.
        byte[] rebuilt = Message.Build(h.Request, h.Flags, p);
        if (MessageHeader.Read(rebuilt) != h) throw new FuzzFinding("the header does not survive a round trip");
    }

    private static void Same(ReadOnlySpan<byte> encoded, ReadOnlySpan<byte> original, string what)
    {
        if (!encoded.SequenceEqual(original)) throw new FuzzFinding($"{what} re-encodes differently");
    }

    public void Dispose() => _feed.Dispose();
}
