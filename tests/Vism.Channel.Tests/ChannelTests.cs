using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using Vism.Channel;

namespace Vism.Channel.Tests;

/// <summary>Two processes' worth of channel ends (two devices, each reached through its real
/// transport socket) exchanging data over one region, over vhost-user and MMIO, waiting on events
/// and polling.</summary>
public sealed class ChannelTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(2);

    public static TheoryData<string, ChannelWaitMode> Transports => new()
    {
        { "vhost-user", ChannelWaitMode.Event },
        { "vhost-user", ChannelWaitMode.Poll },
        { "mmio", ChannelWaitMode.Event },
        { "mmio", ChannelWaitMode.Poll },
    };

    private static ChannelOptions Options(ChannelWaitMode mode) => new() { WaitMode = mode };

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Stream_RandomChunksInBothDirectionsAtOnce_ArrivesIntact(string transport, ChannelWaitMode mode)
    {
        await using ChannelRig rig = await ChannelRig.StartAsync(transport, Options(mode));
        (IsmChannel creator, IsmChannel acceptor) = await rig.PairAsync();
        byte[] forward = RandomNumberGenerator.GetBytes(6 << 20); // three times the ring
        byte[] backward = RandomNumberGenerator.GetBytes(5 << 20);

        Task send1 = Task.Run(() => WriteInRandomChunks(creator.Stream, forward, seed: 1));
        Task send2 = Task.Run(() => WriteInRandomChunks(acceptor.Stream, backward, seed: 2));
        Task<byte[]> recv1 = Task.Run(() => ReadInRandomChunks(acceptor.Stream, forward.Length, seed: 3));
        Task<byte[]> recv2 = Task.Run(() => ReadInRandomChunks(creator.Stream, backward.Length, seed: 4));
        await Task.WhenAll(send1, send2, recv1, recv2).WaitAsync(Limit);

        Assert.Equal(SHA256.HashData(forward), SHA256.HashData(await recv1));
        Assert.Equal(SHA256.HashData(backward), SHA256.HashData(await recv2));
        creator.Dispose();
        Assert.Equal(0, await acceptor.ReadSomeAsync(new byte[16]).AsTask().WaitAsync(Limit)); // the end, after the close
        acceptor.Dispose();
        Assert.Equal(0, rig.Regions); // both detached: the region is freed
    }

    private static async Task WriteInRandomChunks(Stream stream, byte[] data, int seed)
    {
        var random = new Random(seed);
        for (int at = 0; at < data.Length;)
        {
            int n = Math.Min(data.Length - at, random.Next(1, 300_000));
            if (random.Next(2) == 0) await stream.WriteAsync(data.AsMemory(at, n));
            else stream.Write(data, at, n);
            at += n;
        }
    }

    private static async Task<byte[]> ReadInRandomChunks(Stream stream, int length, int seed)
    {
        var random = new Random(seed);
        var received = new byte[length];
        for (int at = 0; at < length;)
        {
            int want = Math.Min(length - at, random.Next(1, 200_000));
            int n = random.Next(2) == 0 ? await stream.ReadAsync(received.AsMemory(at, want)) : stream.Read(received, at, want);
            Assert.True(n > 0, $"the stream ended after {at} of {length} bytes");
            at += n;
        }
        return received;
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Messages_OfRandomSizes_ArriveWholeAndInOrder(string transport, ChannelWaitMode mode)
    {
        await using ChannelRig rig = await ChannelRig.StartAsync(transport, Options(mode));
        (IsmChannel creator, IsmChannel acceptor) = await rig.PairAsync();
        var random = new Random(7);
        // Sizes from empty to more than the ring, so a message also crosses the ring's end.
        byte[][] messages = [.. Enumerable.Range(0, 200).Select(i => RandomNumberGenerator.GetBytes(i % 50 == 49 ? (3 << 20) : random.Next(0, 5000)))];
        Task sender = Task.Run(async () =>
        {
            foreach (byte[] m in messages)
                await creator.SendAsync(m);
            creator.Close();
        });
        var buffer = new byte[4 << 20];
        foreach (byte[] expected in messages)
        {
            int n = await acceptor.ReceiveAsync(buffer).AsTask().WaitAsync(Limit);
            Assert.Equal(expected.Length, n);
            Assert.True(buffer.AsSpan(0, n).SequenceEqual(expected));
        }
        Assert.Equal(-1, await acceptor.ReceiveAsync(buffer).AsTask().WaitAsync(Limit));
        await sender;
        creator.Dispose();
        acceptor.Dispose();
    }

    [Fact]
    public async Task Receive_IntoABufferTooSmall_RefusesAndKeepsTheMessage()
    {
        await using ChannelRig rig = await ChannelRig.StartAsync("vhost-user", new ChannelOptions());
        (IsmChannel creator, IsmChannel acceptor) = await rig.PairAsync();
        creator.Send("hello, peer"u8);
        Assert.Throws<ArgumentException>(() => acceptor.Receive(new byte[4]));
        var buffer = new byte[64];
        int n = acceptor.Receive(buffer);
        Assert.Equal("hello, peer"u8.ToArray(), buffer[..n]);
        creator.Dispose();
        acceptor.Dispose();
    }

    [Fact]
    public async Task Write_AfterThePeerClosed_FailsAndReadsDrainFirst()
    {
        await using ChannelRig rig = await ChannelRig.StartAsync("mmio", new ChannelOptions());
        (IsmChannel creator, IsmChannel acceptor) = await rig.PairAsync();
        await creator.WriteAllAsync(new byte[] { 1, 2, 3 });
        creator.Dispose(); // closes and detaches: the acceptor still holds the region
        var buffer = new byte[8];
        Assert.Equal(3, await acceptor.ReadSomeAsync(buffer));
        Assert.Equal(0, await acceptor.ReadSomeAsync(buffer));
        ChannelException e = await Assert.ThrowsAsync<ChannelException>(async () => await acceptor.WriteAllAsync(new byte[] { 4 }));
        Assert.Contains("closed", e.Message, StringComparison.Ordinal);
        acceptor.Dispose();
        Assert.Equal(0, rig.Regions);
    }

    [Theory]
    [InlineData("vhost-user")]
    [InlineData("mmio")]
    public async Task Connect_FromADeviceTheChannelWasNotOfferedTo_IsRefused(string transport)
    {
        await using ChannelRig rig = await ChannelRig.StartAsync(transport, new ChannelOptions(), devices: 3);
        using ChannelListener listener = await rig.Devices[0].ListenAsync(rig.Devices[1].DevId);
        ChannelException e = await Assert.ThrowsAsync<ChannelException>(() => rig.Devices[2].ConnectAsync(listener.Token));
        Assert.Contains("ATTACH", e.Message, StringComparison.Ordinal);
        // The device it was offered to still joins.
        using IsmChannel acceptor = await rig.Devices[1].ConnectAsync(listener.Token);
        using IsmChannel creator = await listener.AcceptAsync().WaitAsync(Limit);
        Assert.Equal(rig.Devices[1].DevId, creator.PeerDevId);
        Assert.Equal(rig.Devices[0].DevId, acceptor.PeerDevId);
    }

    [Theory]
    [InlineData("vhost-user")]
    [InlineData("mmio")]
    public async Task BlockingAndAsyncWaits_OnThreeChannelsOfOneDevice_EachWakesOnItsPeersSend(string transport)
    {
        // Heartbeats 30 s apart: a wait that missed its notify would stall for a whole interval and
        // run into the limit below. Spin 0: every wait goes through notify -> update event.
        var options = new ChannelOptions { SpinTime = TimeSpan.Zero, HeartbeatInterval = TimeSpan.FromSeconds(30), PeerTimeout = TimeSpan.FromSeconds(60) };
        await using ChannelRig rig = await ChannelRig.StartAsync(transport, options);
        var pairs = new List<(IsmChannel Creator, IsmChannel Acceptor)>();
        for (int i = 0; i < 3; i++)
            pairs.Add(await rig.PairAsync());
        const int Rounds = 40;
        // Device 1: two threads block in Receive (one of them takes the device's events and passes
        // the other's on), one task awaits ReceiveAsync.
        Task<int> Blocking(IsmChannel channel) => Task.Factory.StartNew(() =>
        {
            var buffer = new byte[64];
            int sum = 0;
            for (int r = 0; r < Rounds; r++)
                sum += channel.Receive(buffer) == 8 ? buffer[0] : throw new InvalidOperationException("short message");
            return sum;
        }, TaskCreationOptions.LongRunning);
        async Task<int> Async(IsmChannel channel)
        {
            var buffer = new byte[64];
            int sum = 0;
            for (int r = 0; r < Rounds; r++)
                sum += await channel.ReceiveAsync(buffer) == 8 ? buffer[0] : throw new InvalidOperationException("short message");
            return sum;
        }
        Task<int>[] receivers = [Blocking(pairs[0].Acceptor), Blocking(pairs[1].Acceptor), Async(pairs[2].Acceptor)];
        var random = new Random(11);
        for (int r = 0; r < Rounds; r++)
        {
            foreach (int i in Enumerable.Range(0, 3).OrderBy(_ => random.Next()))
            {
                pairs[i].Creator.Send(new byte[] { (byte)(i + 1), 0, 0, 0, 0, 0, 0, 0 });
                if (random.Next(3) == 0)
                    await Task.Delay(random.Next(1, 5)); // let the receivers block between sends
            }
        }
        int[] sums = await Task.WhenAll(receivers).WaitAsync(TimeSpan.FromSeconds(20));
        Assert.Equal([Rounds * 1, Rounds * 2, Rounds * 3], sums);
        foreach ((IsmChannel c, IsmChannel a) in pairs)
        {
            c.Dispose();
            a.Dispose();
        }
    }

    [Theory]
    [InlineData("vhost-user")]
    [InlineData("mmio")]
    public async Task DeviceDispose_WhileAReaderBlocksOnEvents_EndsTheReadAndReturns(string transport)
    {
        var options = new ChannelOptions { SpinTime = TimeSpan.Zero };
        await using ChannelRig rig = await ChannelRig.StartAsync(transport, options);
        (IsmChannel creator, IsmChannel acceptor) = await rig.PairAsync();
        Task<int> reader = Task.Factory.StartNew(() => acceptor.Receive(new byte[64]), TaskCreationOptions.LongRunning);
        await Task.Delay(200); // the reader announced its wait and takes the device's events
        Assert.False(reader.IsCompleted);
        await Task.Run(rig.Devices[1].Dispose).WaitAsync(TimeSpan.FromSeconds(20));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => reader.WaitAsync(TimeSpan.FromSeconds(20)));
        creator.Dispose();
    }

    /// <summary>The wire layout vism-guest shares (docs/channel.md, version 2): a side about to
    /// sleep bumps its wait sequence in the wait line 0x100 past its cursor line, and nothing lands
    /// beside the cursor, which the peer would otherwise pull to its core at every message.</summary>
    [Fact]
    public async Task WaitAnnounced_LandsInTheWaitLine_NotBesideTheCursor()
    {
        await using ChannelRig rig = await ChannelRig.StartAsync("vhost-user", new ChannelOptions { SpinTime = TimeSpan.Zero });
        (IsmChannel creator, IsmChannel acceptor) = await rig.PairAsync();
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32LittleEndian(rig.Devices[0].Client.Region(creator.Offset, 16)[ChannelLayout.VersionOffset..]));
        Task<int> reader = Task.Factory.StartNew(() => acceptor.Receive(new byte[64]), TaskCreationOptions.LongRunning);
        var clock = Stopwatch.StartNew();
        uint WaitSeq() => BinaryPrimitives.ReadUInt32LittleEndian(rig.Devices[0].Client.Region(creator.Offset + 0x240, 4));
        while (WaitSeq() == 0 && clock.Elapsed < TimeSpan.FromSeconds(20))
            await Task.Delay(5);
        Assert.NotEqual(0u, WaitSeq()); // ring 0's consumer (the acceptor) announced its wait at 0x140 + 0x100
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(rig.Devices[0].Client.Region(creator.Offset + 0x148, 4)));
        creator.Send("wake"u8);
        Assert.Equal(4, await reader.WaitAsync(Limit));
        creator.Dispose();
        acceptor.Dispose();
    }

    public static TheoryData<string, string, ChannelWaitMode> KillCases => new()
    {
        { "vhost-user", "send", ChannelWaitMode.Event },
        { "vhost-user", "recv", ChannelWaitMode.Event },
        { "mmio", "send", ChannelWaitMode.Event },
        { "mmio", "recv", ChannelWaitMode.Event },
        { "vhost-user", "send", ChannelWaitMode.Poll },
        { "mmio", "recv", ChannelWaitMode.Poll },
    };

    /// <summary>The peer is a real child process (tests/Vism.Channel.Peer) reaching vism through its
    /// own socket; it is killed with SIGKILL while data flows. The side in this process, blocked in
    /// a read (the child sent) or in a write on a full ring (the child read), gets
    /// <see cref="ChannelPeerLostException"/> within the peer timeout, also while it spins (polling)
    /// rather than waits for events.</summary>
    [Theory]
    [MemberData(nameof(KillCases))]
    public async Task PeerKilledMidStream_TheOtherSideGetsAnErrorNotAHang(string transport, string childRole, ChannelWaitMode mode)
    {
        var options = new ChannelOptions { WaitMode = mode, HeartbeatInterval = TimeSpan.FromMilliseconds(50), PeerTimeout = TimeSpan.FromSeconds(1) };
        await using ChannelRig rig = await ChannelRig.StartAsync(transport, options, devices: 2, connected: 1);
        using ChannelListener listener = await rig.Devices[0].ListenAsync(rig.DevId(1));
        using Process child = StartPeer(transport, rig.Endpoint(1), listener.Token, childRole);
        try
        {
            using IsmChannel channel = await listener.AcceptAsync().WaitAsync(Limit);
            var buffer = new byte[1 << 20];
            long moved = 0;
            while (moved < 16 << 20) // data flows: 16 MiB, eight rings' worth
            {
                if (childRole == "send") moved += await channel.ReadSomeAsync(buffer).AsTask().WaitAsync(Limit);
                else { await channel.WriteAllAsync(buffer).AsTask().WaitAsync(Limit); moved += buffer.Length; }
            }
            child.Kill(); // SIGKILL
            await child.WaitForExitAsync();
            var clock = Stopwatch.StartNew();
            ChannelPeerLostException lost = await Assert.ThrowsAsync<ChannelPeerLostException>(async () =>
            {
                while (true)
                {
                    if (childRole == "send") await channel.ReadSomeAsync(buffer).AsTask().WaitAsync(Limit);
                    else await channel.WriteAllAsync(buffer).AsTask().WaitAsync(Limit);
                }
            });
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"the error took {clock.Elapsed}");
            Assert.Contains("stopped", lost.Message, StringComparison.Ordinal);
        }
        finally
        {
            if (!child.HasExited) child.Kill();
        }
    }

    private static Process StartPeer(string transport, string socket, ulong token, string role)
    {
        string peer = Path.Combine(AppContext.BaseDirectory, "Vism.Channel.Peer.dll");
        Assert.True(File.Exists(peer), $"{peer} is missing (the test project references tests/Vism.Channel.Peer)");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { peer, transport, socket, $"0x{token:x}", role })
            psi.ArgumentList.Add(a);
        Process child = Process.Start(psi) ?? throw new InvalidOperationException("cannot start the peer");
        child.ErrorDataReceived += (_, _) => { };
        child.BeginErrorReadLine();
        return child;
    }
}
