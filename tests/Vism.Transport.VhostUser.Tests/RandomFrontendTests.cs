using Vism.Driver;
using Vism.Native;
using Vism.Testing;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser.Tests;

/// <summary>
/// Seeded random frontends: well-framed messages with random request codes, flags, payload sizes,
/// payload bytes and descriptors (eventfds, memfds of random sizes), after a real negotiation or
/// none. Whatever they send, the backend never crashes, every descriptor it received is closed once
/// the frontend is gone, and a well-behaved frontend is served afterwards.
/// </summary>
public sealed class RandomFrontendTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task RandomWellFramedMessagesNeverCrashLeakOrBlockTheNextFrontend(int seed)
    {
        var random = new Random(seed);
        await using var b = new Backend();
        b.WaitFor(() => true, "the loop");
        await Session(b, new Random(seed + 1000)); // warm-up: lazily opened runtime descriptors
        int before = Fd.CountOpen();

        for (int connection = 0; connection < 60; connection++)
            await Session(b, random);

        // The random frontends reached the request handlers, not only the framing check.
        Assert.True(b.Counters.Get("vhost-user.connections") >= 61);
        Assert.True(b.Counters.Get("vhost-user.request-errors") + b.Counters.Get("vhost-user.unknown-requests") > 100,
            $"only {b.Counters.Get("vhost-user.request-errors")} request errors and {b.Counters.Get("vhost-user.unknown-requests")} unknown requests");
        Descriptors.AssertBackTo(before, "by the random frontends");
        using (var ram = new GuestRam())
        using (Vism.Driver.VhostUser.VhostUserFrontend good = b.Connect(ram))
        {
            FrontendTests.Probe(good);
            b.WaitFor(() => b.Device.Services is { CanMap: true }, "a well-behaved frontend to start the device after the random ones");
        }
    }

    private static async Task Session(Backend b, Random random)
    {
        using (var c = new RawClient(b.SocketPath))
        {
            if (random.Next(2) == 0) c.NegotiateAll();
            // (Closing is noticed by the send failing: peeking at the socket here would eat reply bytes.)
            for (int i = 0; i < 60; i++)
            {
                uint request = random.Next(8) == 0 ? (uint)random.Next() : (uint)random.Next(1, 46);
                uint flags = random.Next(10) == 0 ? (uint)random.Next(16) : VhostUserConstants.Version | (random.Next(2) == 0 ? VhostUserConstants.NeedReplyFlag : 0);
                byte[] payload = new byte[PayloadLength(random)];
                random.NextBytes(payload);
                var fds = new List<System.Runtime.InteropServices.SafeHandle>();
                try
                {
                    int count = random.Next(6) == 0 ? random.Next(1, 4) : 0;
                    for (int f = 0; f < count; f++)
                        fds.Add(random.Next(2) == 0 ? EventFd.Create().Handle : MemFd.Create("random-frontend", (ulong)random.Next(1, 64) * 4096));
                    try
                    {
                        c.Send(request, flags, payload, [.. fds]);
                    }
                    catch (PosixException)
                    {
                        break; // the backend closed the connection (broken framing): allowed
                    }
                }
                finally
                {
                    foreach (var fd in fds) fd.Dispose();
                }
                while (c.Socket.WaitReadable(0) && c.Read(0) is not null) { } // drain replies
            }
        }
        b.WaitFor(() => !b.Transport.IsConnected, "the random frontend's connection to close");
        await Task.Yield();
    }

    /// <summary>Mostly the sizes vhost-user payloads have, sometimes anything up to and past the 4 KiB limit.</summary>
    private static int PayloadLength(Random random) => random.Next(4) switch
    {
        0 => new[] { 0, 4, 8, 12, 20, 40, 44, 72, 2056 }[random.Next(9)],
        1 => random.Next(0, 64),
        2 => random.Next(0, 4097),
        _ => random.Next(0, 12) * 8,
    };
}
