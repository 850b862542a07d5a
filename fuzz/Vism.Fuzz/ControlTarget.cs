using System.Buffers.Binary;
using Vism.Abstractions;
using Vism.Core;
using Vism.Core.InMemory;
using Vism.Driver;

namespace Vism.Fuzz;

/// <summary>
/// The control-request decoder: Core's ISM devices on a real loop, each driven by the Driver's
/// virtio driver over an in-memory transport, get raw controlq requests of any class, command,
/// length and reply room. An input is a sequence of 5-byte records plus payloads:
/// <c>u8 how, u8 class, u8 command, u8 length, u8 replyLength, payload[length % 49]</c>;
/// <c>how</c> bit 0 sends from device B instead of A, bit 1 puts the last token into payload bytes
/// 0..8, bit 2 the sender's last offset, bit 3 the other device's devid into bytes 8..16, bit 4
/// gives no room for the ack. Rules: every request is answered (an ack of OK or ERR when there is
/// room), the device never needs a reset, nothing escapes to the loop, and once both devices
/// detached every region they got, the backends account for zero bytes.
/// </summary>
internal sealed class ControlTarget : IFuzzTarget
{
    private const int MaxRecords = 64;
    private const int MaxPayload = 48;

    private readonly Rig _rig = new();
    private readonly Peer[] _peers;
    private ulong _lastToken;

    public ControlTarget()
    {
        _peers = [new Peer(_rig, "fuzz-ctl-a"), new Peer(_rig, "fuzz-ctl-b")];
    }

    public void Run(ReadOnlySpan<byte> input)
    {
        Span<byte> buffer = stackalloc byte[MaxPayload];
        try
        {
            for (int records = 0; input.Length >= 5 && records < MaxRecords; records++)
            {
                byte how = input[0], cls = input[1], command = input[2];
                int length = input[3] % (MaxPayload + 1), replyLength = input[4] % (MaxPayload + 1);
                input = input[5..];
                Span<byte> payload = buffer[..length];
                payload.Clear();
                int have = Math.Min(length, input.Length);
                input[..have].CopyTo(payload);
                input = input[have..];
                Peer from = _peers[how & 1], other = _peers[(how & 1) ^ 1];
                if ((how & 2) != 0 && length >= 8) BinaryPrimitives.WriteUInt64LittleEndian(payload, _lastToken);
                if ((how & 4) != 0 && length >= 8) BinaryPrimitives.WriteUInt64LittleEndian(payload, from.LastOffset);
                if ((how & 8) != 0 && length >= 16) BinaryPrimitives.WriteUInt64LittleEndian(payload[8..], other.Client.DevId);
                Send(from, cls, command, payload, replyLength, ackSpace: (how & 16) == 0);
            }
        }
        finally
        {
            foreach (Peer p in _peers) p.DetachAll();
        }
        foreach (Peer p in _peers)
        {
            ulong used = p.Backend.Usage.Used;
            if (used != 0) throw new FuzzFinding($"{p.Device.Description.Name}: {used} bytes still accounted after every region was detached");
        }
        _rig.Check();
    }

    private void Send(Peer p, byte cls, byte command, ReadOnlySpan<byte> payload, int replyLength, bool ackSpace)
    {
        ControlResult r;
        try
        {
            r = p.Client.Send(cls, command, payload, replyLength, ackSpace);
        }
        catch (DriverTransportException ex)
        {
            throw new FuzzFinding($"class {cls} command {command}: {ex.Message}", ex);
        }
        if ((p.Device.Status & DeviceStatus.DeviceNeedsReset) != 0)
            throw new FuzzFinding($"class {cls} command {command} with {payload.Length} bytes put the device into NEEDS_RESET");
        if (!ackSpace)
        {
            if (r.Written != 0) throw new FuzzFinding($"the device wrote {r.Written} bytes into a request without writable buffers");
            return;
        }
        if (r.Written < 1 || r.Ack is not (IsmControl.AckOk or IsmControl.AckErr))
            throw new FuzzFinding($"class {cls} command {command}: answered {r.Written} bytes, ack {r.Ack}");
        if (r.Written > 1 + replyLength) throw new FuzzFinding($"the device wrote {r.Written} bytes into {1 + replyLength}");
        if (!r.Ok) return;
        if (cls == IsmControl.ClassAlloc)
        {
            _lastToken = BinaryPrimitives.ReadUInt64LittleEndian(r.Reply);
            p.Got(BinaryPrimitives.ReadUInt64LittleEndian(r.Reply.AsSpan(8)));
        }
        else if (cls == IsmControl.ClassAttach)
        {
            p.Got(BinaryPrimitives.ReadUInt64LittleEndian(r.Reply));
        }
    }

    public void Dispose()
    {
        foreach (Peer p in _peers) p.Dispose();
        _rig.Dispose();
    }

    /// <summary>One device, its backend and the driver on it.</summary>
    private sealed class Peer : IDisposable
    {
        private readonly HashSet<ulong> _offsets = [];
        private readonly InMemoryTransport _transport;

        public Peer(Rig rig, string name)
        {
            Backend = new InMemoryBackend(8 * Rig.MiB);
            Device = rig.Host.AddDevice(DeviceLayout.Compute(name, Virtio.IsmDeviceId, 16 * Rig.MiB, Rig.MiB, 1), rig.Loops[0],
                Backend, events: null, new DeviceCounters());
            _transport = InMemoryTransport.StartFor(Device);
            Client = IsmClient.Start(_transport, new IsmClientOptions { Timeout = TimeSpan.FromSeconds(10), EventVq = false, EventIrq = false });
        }

        public InMemoryBackend Backend { get; }

        public IsmDevice Device { get; }

        public IsmClient Client { get; }

        public ulong LastOffset { get; private set; }

        public void Got(ulong offset)
        {
            LastOffset = offset;
            _offsets.Add(offset);
        }

        /// <summary>Detaches every region this device got (OK or ERR: a region the fuzzer already detached).</summary>
        public void DetachAll()
        {
            foreach (ulong offset in _offsets) Client.Detach(offset);
            _offsets.Clear();
            LastOffset = 0;
        }

        public void Dispose() => Client.Dispose();
    }
}
