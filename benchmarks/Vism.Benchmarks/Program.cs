using BenchmarkDotNet.Running;

if (args is ["event-path", .. var eventPathArgs])
    return Vism.Benchmarks.EventPath.Run(eventPathArgs);
if (args is ["event-path-peer", .. var peerArgs])
    return Vism.Benchmarks.EventPath.Peer(peerArgs);
if (args is ["channel", .. var channelArgs])
    return Vism.Benchmarks.ChannelBenchmark.Run(channelArgs);
if (args is ["channel-peer", .. var channelPeerArgs])
    return Vism.Benchmarks.ChannelBenchmark.Peer(channelPeerArgs);
if (args is ["idle-cost", .. var rest])
    return Vism.Benchmarks.IdleCost.Run(rest);
if (args is ["cross-core", .. var crossCoreArgs])
    return Vism.Benchmarks.CrossCore.Run(crossCoreArgs);
if (args is ["fairness", .. var fairnessArgs])
    return Vism.Benchmarks.Fairness.Run(fairnessArgs);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
return 0;

public partial class Program;
