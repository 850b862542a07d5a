using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Driver;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;
using Vism.Mmio;
using Vism.Native;
using Xunit.Abstractions;

namespace Vism.E2E.Tests;

/// <summary>
/// Issue 13, played as a hostile tenant against the real <c>vism run</c> (a child process, so an
/// attack that ends it fails the test instead of the test run) through the real transports: the
/// Driver library's vhost-user frontend and MMIO VMM client, which hand a test the descriptors they
/// receive so it can misuse them as a VMM could. Every test checks that vism is still serving, that a
/// neighbour device is unaffected, and that bytes, sizes and permissions are exactly as granted.
/// </summary>
public sealed partial class TrustBoundaryTests(ITestOutputHelper testOutput)
{
    private const ulong MiB = 1 << 20;
    private static readonly IsmClientOptions Quiet = new() { EventVq = false, EventIrq = false, Timeout = TimeSpan.FromSeconds(30) };
    private readonly Action<string> _log = TestLog.For(testOutput);

    public static TheoryData<string> Transports => new() { "vhost-user", "mmio" };

    public static TheoryData<string, bool> TransportsAndSealing => new()
    {
        { "vhost-user", true }, { "vhost-user", false }, { "mmio", true }, { "mmio", false },
    };

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int ftruncate(int fd, long length);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int munmap(nint addr, nuint length);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static partial int fallocate(int fd, int mode, long offset, long length);

    private static Errno Truncate(SafeHandle fd, ulong length) =>
        ftruncate(Fd.Raw(fd), (long)length) == 0 ? 0 : NativeConvert.ToErrno(Marshal.GetLastPInvokeError());

    private static IDriverTransport Connect(string transport, string socket, GuestRam ram, Action<ulong, SafeHandle, bool>? onMap = null) =>
        transport == "vhost-user"
            ? VhostUserFrontend.Connect(socket, ram, new VhostUserFrontendOptions { DeviceId = Virtio.IsmDeviceId, DescriptorReceived = onMap })
            : MmioVmmClient.Connect(socket, ram, new MmioVmmOptions { DescriptorReceived = onMap });

    /// <summary>A driver on one device, with the RAM and connection it owns.</summary>
    private sealed class Tenant : IDisposable
    {
        public Tenant(string transport, string socket, GuestRam? ram = null, Action<ulong, SafeHandle, bool>? onMap = null)
        {
            Ram = ram ?? new GuestRam();
            Transport = Connect(transport, socket, Ram, onMap);
            Client = IsmClient.Start(Transport, Quiet);
        }

        public GuestRam Ram { get; }
        public IDriverTransport Transport { get; }
        public IsmClient Client { get; }

        public void Dispose()
        {
            Client.Dispose();
            Transport.Dispose();
            Ram.Dispose();
        }
    }

    /// <summary>The neighbour's round trip: ALLOC, write and read its region, DETACH.</summary>
    private static void AssertServes(Tenant tenant, string who)
    {
        AllocReply r = tenant.Client.Alloc(MiB);
        Assert.True(r.Ok, $"{who}: ALLOC answered ack {r.Ack}");
        "still served"u8.CopyTo(tenant.Client.Region(r.Offset, 12));
        Assert.Equal("still served"u8.ToArray(), tenant.Client.Region(r.Offset, 12).ToArray());
        Assert.Equal(IsmControl.AckOk, tenant.Client.Detach(r.Offset));
    }

    private static async Task WaitFor(Func<bool> condition, string what)
    {
        long deadline = Environment.TickCount64 + 30_000;
        while (!condition())
        {
            if (Environment.TickCount64 > deadline) throw new TimeoutException(what);
            await Task.Delay(20);
        }
    }

    /// <summary>Guest RAM in a plain tmpfs file (what <c>memory-backend-file</c> gives): it cannot be sealed.</summary>
    private static GuestRam UnsealableRam(ulong size)
    {
        string path = Path.Combine("/dev/shm", $"vism-trust-ram-{Guid.NewGuid():N}");
        int fd = Syscall.open(path, OpenFlags.O_RDWR | OpenFlags.O_CREAT | OpenFlags.O_EXCL | OpenFlags.O_CLOEXEC, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
        Assert.True(fd >= 0, $"open {path}: {Stdlib.GetLastError()}");
        Syscall.unlink(path);
        SafeFileHandle handle = Fd.Own(fd);
        Assert.Equal(0, ftruncate(fd, (long)size));
        return GuestRam.Adopt(handle, size);
    }

    /// <summary>13.1: a VMM shrinks the guest RAM it handed over and kicks the controlq. A memfd is
    /// sealed against that by vism (the truncate fails, the device keeps serving); a file cannot be,
    /// and the device reads its rings with fault-safe copies: it is put in DEVICE_NEEDS_RESET with a
    /// logged reason. Either way vism lives and the neighbour is served.</summary>
    [Theory]
    [MemberData(nameof(TransportsAndSealing))]
    public async Task ShrunkGuestRam_KickedControlq_HostSurvives_NeighbourServed(string transport, bool sealable)
    {
        await using var vism = await VismProcess.StartAsync(["a", "b"], _log, transport: transport);
        const ulong ramSize = 4 * MiB;
        using var attacker = new Tenant(transport, vism.Socket("a"), sealable ? new GuestRam(ramSize) : UnsealableRam(ramSize));
        using var neighbour = new Tenant(transport, vism.Socket("b"));
        Assert.True(attacker.Client.Alloc(MiB).Ok);

        Errno truncate = Truncate(attacker.Ram.Handle, 0);
        if (sealable)
        {
            Assert.Equal(Errno.EPERM, truncate); // vism sealed it with F_SEAL_SHRINK
            Assert.Equal((long)ramSize, Fd.Size(attacker.Ram.Handle));
            AssertServes(attacker, "the device whose VMM tried to shrink its sealed RAM");
        }
        else
        {
            Assert.Equal((Errno)0, truncate);
            // The attacker must not touch its own RAM now (it would fault itself): only the kick.
            attacker.Transport.Kick(Virtio.ControlQueue);
            await WaitFor(() => vism.HasExited || vism.Counters("a").Any(c => c.Key.StartsWith("err.ring", StringComparison.Ordinal)),
                "device a never noticed its rings vanished");
            Assert.False(vism.HasExited, "vism ended when a VMM shrank its guest RAM");
            Assert.Contains("DeviceNeedsReset", vism.Status().Devices.Single(d => d.Name == "a").Status);
        }
        Assert.False(vism.HasExited);
        AssertServes(neighbour, "the neighbour device b");
        Assert.Equal(0, vism.Counters("b").Where(c => c.Key.StartsWith("err.", StringComparison.Ordinal)).Sum(c => c.Value));
    }

    /// <summary>13.2: a peer granted ATTACH|READ keeps the descriptor the device sent with the map
    /// request and tries to write and resize through it, ignoring the read-only flag.</summary>
    [Theory]
    [MemberData(nameof(Transports))]
    public async Task ReadOnlyGrant_ReceivedDescriptor_CannotWriteOrResize(string transport)
    {
        await using var vism = await VismProcess.StartAsync(["a", "b"], _log, transport: transport);
        using var owner = new Tenant(transport, vism.Socket("a"));
        var received = new List<(SafeFileHandle Fd, bool Writable)>();
        using var peer = new Tenant(transport, vism.Socket("b"), onMap: (_, fd, writable) =>
        {
            lock (received) received.Add((Fd.Dup(fd), writable));
        });
        try
        {
            AllocReply region = owner.Client.Alloc(MiB);
            Assert.True(region.Ok);
            "the owner's bytes"u8.CopyTo(owner.Client.Region(region.Offset, 17));
            Assert.Equal(IsmControl.AckOk, owner.Client.Grant(region.Offset, 0, IsmPermissions.Attach | IsmPermissions.Read));
            AttachReply attach = peer.Client.Attach(region.Token);
            Assert.True(attach.Ok);
            (SafeFileHandle fd, bool writable) = Assert.Single(received);
            Assert.False(writable);

            // A writable shared mapping of the descriptor is refused by the kernel.
            const int protReadWrite = 3, mapShared = 1;
            nint p = mmap(0, (nuint)MiB, protReadWrite, mapShared, Fd.Raw(fd), 0);
            if (p != -1)
            {
                Marshal.Copy("the peer wrote here"u8.ToArray(), 0, p, 19);
                munmap(p, (nuint)MiB);
            }
            Assert.Equal(-1, p);
            // No resizing either way, no claiming beyond the accounting.
            Assert.NotEqual((Errno)0, Truncate(fd, 64 * MiB));
            Assert.NotEqual((Errno)0, Truncate(fd, 0));
            Assert.NotEqual(0, fallocate(Fd.Raw(fd), 0, 0, (long)(64 * MiB)));
            Assert.Equal((long)MiB, Fd.Size(fd));
            // A read-only mapping works and shows the owner's bytes, which are unchanged.
            using (Mapping ro = Mapping.Map(fd, 0, MiB, writable: false))
                Assert.Equal("the owner's bytes"u8.ToArray(), ro.Span(0, 17).ToArray());
            Assert.Equal("the owner's bytes"u8.ToArray(), owner.Client.Region(region.Offset, 17).ToArray());
            Assert.Equal("the owner's bytes"u8.ToArray(), peer.Client.Region(attach.Offset, 17).ToArray());
            Assert.Equal(MiB, vism.Status().Devices.Single(d => d.Name == "a").MemoryUsed);
        }
        finally
        {
            lock (received) foreach ((SafeFileHandle fd, _) in received) fd.Dispose();
        }
        Assert.False(vism.HasExited);
    }

    /// <summary>13.2: a peer with WRITE holds a writable descriptor of a file-backed region (a file
    /// cannot be sealed) and grows it to 64 MiB. The next map of that region (the peer attaching it
    /// again) is refused with a logged size mismatch, and the file is cut back, so the accounting
    /// stays exact.</summary>
    [Theory]
    [MemberData(nameof(Transports))]
    public async Task WritablePeer_GrowsFileBackedRegion_NextMapRefused_SizeRestored(string transport)
    {
        await using var vism = await VismProcess.StartAsync(["a", "b", "c"], _log, transport: transport);
        using var owner = new Tenant(transport, vism.Socket("a"));
        SafeFileHandle? kept = null;
        using var peer = new Tenant(transport, vism.Socket("b"), onMap: (_, fd, _) => kept ??= Fd.Dup(fd));
        using var neighbour = new Tenant(transport, vism.Socket("c"));
        try
        {
            AllocReply region = owner.Client.Alloc(MiB);
            Assert.True(region.Ok);
            AttachReply attach = peer.Client.Attach(region.Token);
            Assert.True(attach.Ok);
            Assert.NotNull(kept);
            Assert.Equal((Errno)0, Truncate(kept, 64 * MiB));

            // Attaching again maps the region: refused, and the file is its own size again.
            Assert.Equal(IsmControl.AckOk, peer.Client.Detach(attach.Offset));
            Assert.Equal(IsmControl.AckErr, peer.Client.Attach(region.Token).Ack);
            Assert.Equal(1, vism.Counters("b").GetValueOrDefault("err.map.size-mismatch"));
            Assert.Equal(1, vism.Counters("a").GetValueOrDefault("memory.size-mismatch"));
            Assert.Equal((long)MiB, Fd.Size(kept));
            Assert.Equal(MiB, vism.Status().Devices.Single(d => d.Name == "a").MemoryUsed);
            AssertServes(peer, "the device whose attach was refused");
            AssertServes(neighbour, "the neighbour device c");
        }
        finally
        {
            kept?.Dispose();
        }
        Assert.False(vism.HasExited);
    }

    /// <summary>13.3: the owner takes WRITE, then everything, from an attached peer; the peer's
    /// mapping follows at once (read-only, then gone) and never sees the owner's later writes.</summary>
    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Grant_ReachesLiveAttachments(string transport)
    {
        await using var vism = await VismProcess.StartAsync(["a", "b"], _log, transport: transport);
        using var owner = new Tenant(transport, vism.Socket("a"));
        using var peer = new Tenant(transport, vism.Socket("b"));
        AllocReply region = owner.Client.Alloc(MiB);
        AttachReply attach = peer.Client.Attach(region.Token);
        Assert.True(region.Ok && attach.Ok);
        ulong devB = peer.Client.DevId;

        Assert.Equal(IsmControl.AckOk, owner.Client.Grant(region.Offset, devB, IsmPermissions.Attach | IsmPermissions.Read));
        await WaitFor(() => vism.Counters("b").GetValueOrDefault("perm.live.remapped-ro") == 1, "b's mapping was not made read-only");
        Assert.Equal(IsmControl.AckOk, owner.Client.Grant(region.Offset, devB, IsmPermissions.None));
        await WaitFor(() => vism.Counters("b").GetValueOrDefault("perm.live.revoked") == 1, "b's mapping was not removed");
        Assert.Equal(IsmControl.AckErr, peer.Client.Detach(attach.Offset)); // nothing left at that offset
        Assert.Equal(0, vism.Status().Devices.Single(d => d.Name == "b").RegionsInUse);
        Assert.Single(vism.Status().Regions.Single().References);
        AssertServes(peer, "the peer whose attachment was revoked");
    }

    /// <summary>13.7: undefined header flag bits on READ are BAD_MESSAGE (docs/mmio-protocol.md),
    /// and the connection goes on.</summary>
    [Fact]
    public async Task MmioRead_WithUndefinedFlagBits_IsBadMessage()
    {
        await using var vism = await VismProcess.StartAsync(["a"], _log, transport: "mmio");
        using UnixSocket socket = UnixSocket.Connect(vism.Socket("a"));
        socket.Send(MmioFrame.Build(MmioMessageType.Hello, MmioMessageFlags.None, 1, new HelloRequest(MmioProtocol.Magic, MmioProtocol.Version).Encode()));
        Assert.Equal(MmioStatus.Ok, MmioFrame.Receive(socket, null)!.Value.Header.Status);
        byte[] read = new RegisterAccess(MmioRegister.MagicValue, 4, 0).Encode();
        socket.Send(MmioFrame.Build(MmioMessageType.Read, (MmioMessageFlags)0xFFFC, 2, read));
        Assert.Equal(MmioStatus.BadMessage, MmioFrame.Receive(socket, null)!.Value.Header.Status);
        socket.Send(MmioFrame.Build(MmioMessageType.Read, MmioMessageFlags.None, 3, read));
        var (header, payload) = MmioFrame.Receive(socket, null)!.Value;
        Assert.Equal(MmioStatus.Ok, header.Status);
        Assert.Equal(0x74726976u, BitConverter.ToUInt32(payload)); // "virt"
        Assert.Equal(1, vism.Counters("a").GetValueOrDefault("mmio.protocol.error"));
    }
}
