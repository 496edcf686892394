// build.sh bundles etcd3 from here into dist/etcd/lib/etcd3.js (see shared/etcd/load.ts).
module.exports = require('etcd3');
