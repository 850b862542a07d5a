using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using Vism.Abstractions;
using Vism.Native;
using Vism.Testing;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser.Tests;

public sealed class OptionsTests
{
    private static readonly DeviceDescription Device = new()
    {
        Name = "ism0", RegionSize = 1 << 20, NotifySize = 1, MaxRegions = 1023, RegionsWindowSize = 1023UL << 20, NotifyWindowSize = 1 << 20,
    };

    [Fact]
    public void DefaultsAreValidAndClaimTheSocketInTheSocketDirectory()
    {
        var ctx = new RecordingValidationContext(Device);
        new VhostUserOptions().Validate(ctx);
        Assert.Empty(ctx.Errors);
        Assert.Equal(["/run/vism/ism0.sock"], ctx.Endpoints);
    }

    [Fact]
    public void ARelativeSocketPathIsTakenUnderTheSocketDirectoryNotTheWorkingDirectory()
    {
        var host = new HostDescription { Gid = 1, StateDirectory = "/var/lib/vism", SocketDirectory = "/run/vism" };
        Assert.Equal("/run/vism/vm1/ism.sock", new VhostUserOptions { SocketPath = "vm1/ism.sock" }.ResolveSocketPath(host, Device));
        Assert.Equal("/tmp/x.sock", new VhostUserOptions { SocketPath = "/tmp/x.sock" }.ResolveSocketPath(host, Device));
        Assert.Equal("/run/vism/ism0.sock", new VhostUserOptions().ResolveSocketPath(host, Device));
    }

    [Fact]
    public void EveryBadValueIsReportedAgainstItsKey()
    {
        var ctx = new RecordingValidationContext(Device);
        new VhostUserOptions
        {
            SocketPath = "/tmp/" + new string('s', 120),
            Vectors = -1,
            MaxMemSlots = 0,
            NotifyPollFast = TimeSpan.FromMicroseconds(5),
            NotifyPollSlow = TimeSpan.FromSeconds(20),
            NotifyPollHold = TimeSpan.FromSeconds(2),
            BackendReplyTimeoutMs = 5,
        }.Validate(ctx);
        Assert.Equal(["socket-path", "vectors", "max-mem-slots", "notify-poll-fast", "notify-poll-slow", "notify-poll-hold", "backend-reply-timeout-ms"],
            ctx.Errors.Select(e => e.Key));
        Assert.Empty(ctx.Endpoints);
    }

    [Fact]
    public void ThePluginRegistersTheVhostUserTransportWithItsOptions()
    {
        var builder = new RecordingPluginBuilder();
        new VhostUserPlugin().Register(builder);
        Assert.Equal([("vhost-user", PluginKind.Transport, typeof(VhostUserTransport), typeof(VhostUserOptions))], builder.Registrations);
        Assert.NotNull(typeof(VhostUserPlugin).Assembly.GetCustomAttributes(typeof(VismPluginAttribute), false)
            .Cast<VismPluginAttribute>().SingleOrDefault(a => a.ContractVersion == VismContract.Version));
        Assert.All(typeof(VhostUserOptions).GetProperties(), p =>
            Assert.NotNull(p.GetCustomAttributes(typeof(System.ComponentModel.DescriptionAttribute), false).SingleOrDefault()));
    }
}

/// <summary>Abuse that needs more than the ordinary client API.</summary>
public sealed class TransportAbuseTests
{
    [Fact]
    public async Task MoreThanEightFdsInOneMessageCloseTheConnectionAndLeakNothing()
    {
        await using var b = new Backend();
        using var c = new RawClient(b.SocketPath);
        Assert.True(c.IsServed());
        int before = Fd.CountOpen();
        var fds = Enumerable.Range(0, 9).Select(_ => EventFd.Create()).ToArray();
        try
        {
            SendWithFds(c.Socket.Handle, Message.BuildU64((uint)FrontendRequest.SetVringCall, VhostUserConstants.Version, 0),
                fds.Select(f => f.Handle).ToArray());
        }
        finally
        {
            foreach (EventFd f in fds) f.Dispose();
        }
        Assert.True(c.IsClosedByPeer());
        b.WaitFor(() => !b.Transport.IsConnected, "the connection to close");
        Assert.True(b.Log.Contains("truncated"));
        Descriptors.AssertBackTo(before);
    }

    [Fact]
    public async Task AFrontendThatStopsReadingRepliesIsDroppedAndTheLoopKeepsServing()
    {
        await using var shared = new Backend(name: "other");
        await using var b = new Backend(loop: shared.Loop, name: "stuck");
        using var stuck = new RawClient(b.SocketPath);
        stuck.NegotiateAll();
        byte[] request = Message.Build((uint)FrontendRequest.GetShmemConfig, VhostUserConstants.Version, []);
        try
        {
            for (int i = 0; i < 1000; i++) stuck.Socket.Send(request); // 2 MiB of replies nobody reads
        }
        catch (PosixException ex) when (ex.Errno is Errno.EPIPE or Errno.ECONNRESET)
        {
            // vism dropped us before we finished asking
        }
        b.WaitFor(() => !b.Transport.IsConnected, "the stuck frontend to be dropped");
        Assert.True(b.Log.Contains("not reading"));
        using var other = new RawClient(shared.SocketPath); // same loop, still serving
        Assert.True(other.IsServed());
    }

    /// <summary>sendmsg with any number of fds (UnixSocket refuses more than eight).</summary>
    private static unsafe void SendWithFds(SafeHandle socket, byte[] data, SafeHandle[] fds)
    {
        fixed (byte* p = data)
        {
            var msg = new Msghdr
            {
                msg_iov = [new Iovec { iov_base = (nint)p, iov_len = (ulong)data.Length }],
                msg_iovlen = 1,
                msg_control = new byte[Syscall.CMSG_SPACE((ulong)(4 * fds.Length))],
            };
            msg.msg_controllen = msg.msg_control.Length;
            long at = Syscall.CMSG_FIRSTHDR(msg);
            new Cmsghdr
            {
                cmsg_len = (long)Syscall.CMSG_LEN((ulong)(4 * fds.Length)),
                cmsg_level = UnixSocketProtocol.SOL_SOCKET,
                cmsg_type = UnixSocketControlMessage.SCM_RIGHTS,
            }.WriteToBuffer(msg, at);
            long dataAt = Syscall.CMSG_DATA(msg, at);
            for (int i = 0; i < fds.Length; i++)
                BitConverter.TryWriteBytes(msg.msg_control.AsSpan((int)dataAt + 4 * i), (int)fds[i].DangerousGetHandle());
            Assert.Equal(data.Length, Syscall.sendmsg((int)socket.DangerousGetHandle(), msg, MessageFlags.MSG_NOSIGNAL));
        }
    }
}
