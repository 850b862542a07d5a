using Vism.Mmio;
using Vism.Native;
using Vism.Testing;
using R = Vism.Mmio.MmioRegister;

namespace Vism.Transport.Mmio.Tests;

/// <summary>
/// Seeded random VMMs: after HELLO (or without it), well-framed messages of random types, flags,
/// payload sizes and bytes, register accesses at random offsets and widths (status and queue
/// registers included), and random descriptors. Whatever they send, the device never crashes,
/// every descriptor it received is closed once the VMM is gone, and the next VMM is served.
/// </summary>
[Collection(DescriptorCountingCollection.Name)]
public sealed class RandomVmmTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task RandomWellFramedMessagesNeverCrashLeakOrBlockTheNextVmm(int seed)
    {
        await using MmioHarness h = await MmioHarness.StartAsync();
        await Session(h, new Random(seed + 1000)); // warm-up: lazily opened runtime descriptors
        int before = Descriptors.Baseline();

        var random = new Random(seed);
        for (int connection = 0; connection < 40; connection++)
            await Session(h, random);

        Descriptors.AssertBackTo(before, "by the random VMMs");
        Assert.True(h.Counters.Get("mmio.protocol.error") + h.Counters.Get("mmio.access.undefined") + h.Counters.Get("mmio.access.width") > 100,
            "the random VMMs did not reach the message and register handlers");
        using RawVmm next = RawVmm.Connect(h.SocketPath);
        Assert.Equal(Vism.Abstractions.Virtio.IsmDeviceId, next.Hello().DeviceId);
        var (reply, value) = next.Call(MmioMessageType.Read, new RegisterAccess(R.MagicValue, 4, 0).Encode());
        Assert.Equal(MmioStatus.Ok, reply.Status);
        Assert.Equal(R.Magic, BitConverter.ToUInt64(value));
    }

    private static async Task Session(MmioHarness h, Random random)
    {
        using (RawVmm vmm = RawVmm.Connect(h.SocketPath))
        {
            if (random.Next(5) != 0) vmm.Hello();
            for (int i = 0; i < 60; i++)
            {
                MmioMessageType type = random.Next(10) == 0 ? (MmioMessageType)random.Next(ushort.MaxValue) : (MmioMessageType)random.Next(1, 8);
                var flags = (MmioMessageFlags)random.Next(4);
                byte[] payload = type is MmioMessageType.Read or MmioMessageType.Write && random.Next(3) != 0
                    ? RandomAccess(random)
                    : RandomBytes(random);
                var fds = new List<System.Runtime.InteropServices.SafeHandle>();
                try
                {
                    int count = random.Next(6) == 0 ? random.Next(1, 4) : 0;
                    for (int f = 0; f < count; f++)
                        fds.Add(random.Next(2) == 0 ? EventFd.Create().Handle : MemFd.Create("random-vmm", (ulong)random.Next(1, 64) * 4096));
                    vmm.Send(type, payload, flags, [.. fds]);
                }
                catch (PosixException)
                {
                    break; // the device closed the connection: allowed
                }
                finally
                {
                    foreach (var fd in fds) fd.Dispose();
                }
                if (!vmm.Drain()) break;
            }
        }
        await h.WaitUntil(() => !h.Transport.HasVmm, "the random VMM's connection to close");
    }

    /// <summary>A register access: mostly real registers and widths, sometimes anything.</summary>
    private static byte[] RandomAccess(Random random)
    {
        uint offset = random.Next(3) switch
        {
            0 => (uint)random.Next(0, 0x200),
            1 => (uint)random.Next(0, 0x80) * 4,
            _ => (uint)random.Next(),
        };
        uint width = random.Next(4) == 0 ? (uint)random.Next(0, 16) : new uint[] { 1, 2, 4, 8 }[random.Next(4)];
        ulong value = random.Next(3) == 0 ? (ulong)random.NextInt64() : (ulong)random.Next(0, 256);
        return new RegisterAccess(offset, width, value).Encode();
    }

    private static byte[] RandomBytes(Random random)
    {
        int length = random.Next(4) switch
        {
            0 => new[] { 0, 4, 8, 12, 16, 24, 32 }[random.Next(7)],
            1 => random.Next(0, 64),
            2 => random.Next(0, 1024),
            _ => random.Next(0, 8) * 8,
        };
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }
}
