using Vism.Abstractions;
using Vism.Native;
using Vism.Testing;

namespace Vism.Native.Tests;

public class LoopListenerTests
{
    [Fact]
    public async Task AcceptsEveryPendingConnectionOnTheLoopAndRemovesTheSocketFileOnDispose()
    {
        using var dir = new TempDir("listener");
        using var loop = new EventLoop("listener-test");
        var accepted = new List<UnixSocket>();
        var threads = new List<bool>();
        string path = dir["s.sock"];
        LoopListener listener = await loop.InvokeAsync(() => LoopListener.Start(path, loop,
            s => { lock (accepted) { accepted.Add(s); threads.Add(loop.IsOnLoop); } }, _ => { }));
        using UnixSocket a = UnixSocket.Connect(path), b = UnixSocket.Connect(path);
        for (int i = 0; i < 200 && accepted.Count < 2; i++) await Task.Delay(10);
        lock (accepted)
        {
            Assert.Equal(2, accepted.Count);
            Assert.All(threads, Assert.True);
            accepted.ForEach(s => s.Dispose());
        }
        await loop.InvokeAsync(listener.Dispose);
        Assert.False(File.Exists(path));
        Assert.Throws<PosixException>(() => UnixSocket.Connect(path));
    }

    [Fact]
    public async Task AStaleSocketFileIsReplacedButAServedOneIsRefused()
    {
        using var dir = new TempDir("listener");
        using var loop = new EventLoop("listener-test");
        string path = dir["s.sock"];
        UnixSocket.Listen(path).Dispose(); // leaves a socket file nobody serves
        Assert.True(File.Exists(path));
        LoopListener first = await loop.InvokeAsync(() => LoopListener.Start(path, loop, s => s.Dispose(), _ => { }));
        var refused = await Assert.ThrowsAsync<PosixException>(() => loop.InvokeAsync(() => LoopListener.Start(path, loop, s => s.Dispose(), _ => { })));
        Assert.Equal(Mono.Unix.Native.Errno.EADDRINUSE, refused.Errno);
        await loop.InvokeAsync(first.Dispose);
    }
}
